"""The hook contract between mm's trainer and a model-family plugin.

Specs are grouped by the phase in which the trainer calls them. Hooks marked
``firstresult`` stop at the first non-None result; plugins registered later are
called first, so stacking ``--plugin a --plugin b`` lets ``b`` override ``a``.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("mm")
hookimpl = pluggy.HookimplMarker("mm")


# --- configuration -----------------------------------------------------------


@hookspec
def default_config(task):
    """Return a partial config dict of defaults for ``task`` ("run", "infer", "extract").

    Every plugin's result is merged in registration order (mm-core first, the
    plugin last), and the merged result is also the schema user configs are
    validated against: a key absent from it is an error.
    """


# --- building ----------------------------------------------------------------


@hookspec(firstresult=True)
def model_provider(config, runtime):
    """Build the model to train (on cpu or meta; engines place it). Stops at the first non-None result."""


@hookspec(firstresult=True)
def parallel_plan(model, config):
    """Describe the model for the engines as a dict; every key is optional until its engine is turned on.

    - ``fsdp_modules``: module patterns FSDP2 wraps (``["blocks.{*}"]``); ``pretrained``: weights to load after
      a meta-device model is allocated.
    - Pipeline parallelism (``parallel.pp.size > 1``) sees the forward as ``pre → layers → post``:
      ``pp_layers`` is the path of the ``nn.ModuleList`` cut into stages (``"blocks"``);
      ``pp_pre(model, batch) -> carry`` runs on the first stage up to the first layer, ``carry`` being a tensor
      or a tuple of tensors (``(hidden, *extras)``: extras pass every layer unchanged);
      ``pp_post(model, carry, batch) -> output`` runs on the last stage after the last layer, and its output goes
      to ``loss_func`` (``forward_step`` is not called under PP); optional ``pp_layer(layer, carry) -> carry``
      calls one layer (default ``layer(hidden, *extras)``); ``pp_pre_modules`` / ``pp_post_modules`` list the
      paths (modules, parameters or buffers) that ``pp_pre`` / ``pp_post`` use. Every parameter must be in one of
      the three. For a VLM, ``pp_layers`` may map names to stacks in forward order (``{"vit": ..., "llm": ...}``):
      the last is cut, the earlier ones run inside ``pp_pre``; ``pp_num_layers`` passes the model section's own
      ``pipeline_num_layers``. See docs/pipeline_parallel.md.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def parallelize_model(model, config, runtime):
    """Apply the parallel engines to ``model`` and return it (mm-core's default is DDP or nothing).

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def datasets_provider(config, runtime):
    """Return ``(train, valid, test)`` iterables of micro-batches; valid/test may be None.

    Stops at the first non-None result.
    """


# --- each step ---------------------------------------------------------------


@hookspec(firstresult=True)
def get_batch(data_iterator, runtime):
    """Take the next micro-batch from ``data_iterator`` and return a dict on ``runtime.device``.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def forward_step(batch, model, runtime):
    """Run the model on a batch and return its output. Stops at the first non-None result."""


@hookspec(firstresult=True)
def loss_func(output, batch, runtime):
    """Return ``(loss, metrics)``: a scalar tensor and a dict of floats to log.

    A ``tokens`` entry in metrics is summed over micro-batches and reported as tokens/s; a
    ``flops`` entry (this rank's forward + backward model FLOPs) as TFLOP/s and MFU.
    Stops at the first non-None result.
    """


# --- after training ----------------------------------------------------------


@hookspec
def after_training(config, runtime, checkpoint):
    """Called on every rank once training ends; ``checkpoint`` is the last saved directory or None."""


# --- other subcommands ---------------------------------------------------------


@hookspec(firstresult=True)
def inference(config, runtime):
    """Run ``mm infer``: generate from the config's ``inference`` section. Stops at the first non-None result."""


@hookspec(firstresult=True)
def extract_features(config, runtime):
    """Run ``mm extract``: encode the dataset once into feature shards. Stops at the first non-None result."""


@hookspec
def register_converters(registry):
    """Add checkpoint converters (name -> converter class) to registry for mm-convert."""
