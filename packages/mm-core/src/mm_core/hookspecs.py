"""The hook contract between mm's trainer and a model-family plugin.

Specs are grouped by the phase in which the trainer calls them. Hooks marked ``firstresult`` stop at the first
non-None result; plugins registered later are called first, so stacking ``--plugin a --plugin b`` lets ``b``
override ``a``. mm-core's own implementations (:mod:`mm_core.defaults`) are registered first and tried last.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from mm_core.config import Config
    from mm_core.plan import ParallelPlan
    from mm_core.runtime import Runtime

hookspec = pluggy.HookspecMarker("mm")
hookimpl = pluggy.HookimplMarker("mm")


# --- configuration -----------------------------------------------------------


@hookspec
def default_config(task: str) -> dict[str, Any]:
    """Return a partial config of defaults for ``task``.

    Every plugin's result is merged in registration order (mm-core first, the plugin last), and the merged
    result is also the schema user configs are validated against: a key absent from it is an error.

    :param task: the subcommand the config is for: ``"run"``, ``"infer"`` or ``"extract"``.
    :returns: a nested dict of sections (``model``, ``data``, ``training``...) and their default values.
    """


# --- building ----------------------------------------------------------------


@hookspec(firstresult=True)
def model_provider(config: Config, runtime: Runtime) -> torch.nn.Module:
    """Build the model to train, on the CPU or the meta device; the engines place it.

    Stops at the first non-None result.

    :param config: the validated run config.
    :param runtime: device, process group and mesh of this process.
    :returns: the model, with every parameter that trains having ``requires_grad``.
    """


@hookspec(firstresult=True)
def parallel_plan(model: torch.nn.Module, config: Config) -> ParallelPlan:
    """Describe ``model`` to the engines: what FSDP2 shards, where CP splits, how PP cuts, what to load.

    The trainer asks once, after ``model_provider``, and hands the plan to ``parallelize_model``. Stops at the
    first non-None result; with no result the plan is empty (``ParallelPlan()``).

    :param model: what ``model_provider`` returned.
    :param config: the validated run config.
    :returns: an :class:`mm_core.plan.ParallelPlan`, whose fields document the schema.
    """


@hookspec(firstresult=True)
def parallelize_model(model: torch.nn.Module, plan: ParallelPlan, config: Config, runtime: Runtime) -> torch.nn.Module:
    """Apply the parallel engines to ``model`` following ``plan`` and return what trains.

    mm-parallel's implementation applies PP, CP, activation checkpointing, compile and FSDP2; mm-core's default
    places the model and wraps it in DDP when data-parallel. Stops at the first non-None result.

    :param model: what ``model_provider`` returned.
    :param plan: what ``parallel_plan`` returned.
    :param config: the validated run config.
    :param runtime: device, process group and mesh of this process.
    :returns: the model to train, or an ``mm_core.trainer.StepRunner`` that runs whole steps itself (PP).
    """


@hookspec(firstresult=True)
def datasets_provider(config: Config, runtime: Runtime) -> tuple[Iterable, Iterable | None, Iterable | None]:
    """Return this rank's ``(train, valid, test)`` iterables of micro-batches; valid and test may be None.

    Stops at the first non-None result.

    :param config: the validated run config.
    :param runtime: device, process group and mesh of this process (its ``dp_rank`` picks the shard).
    :returns: three iterables; a resumable one implements ``state_dict`` / ``load_state_dict``.
    """


# --- each step ---------------------------------------------------------------


@hookspec(firstresult=True)
def get_batch(data_iterator: Iterator, runtime: Runtime, model: torch.nn.Module) -> Any:
    """Take the next micro-batch from ``data_iterator`` and return it on ``runtime.device``.

    Stops at the first non-None result (mm-core's default moves every tensor to the device). An implementation
    takes only the arguments it names: ``model`` is there for plugins whose frozen encoders turn batches into
    features ahead of the step (the video families' encoder engines).

    :param data_iterator: the trainer's iterator over the train (or valid) iterable.
    :param runtime: device, process group and mesh of this process.
    :param model: what ``parallelize_model`` returned (under PP, the pipeline runner).
    :returns: the batch: a dict of tensors and plain values, or a plugin's own batch type (a dataclass with
        ``to(device)``, say), handed as it is to ``forward_step`` and ``loss_func``.
    """


@hookspec(firstresult=True)
def forward_step(batch: Any, model: torch.nn.Module, runtime: Runtime) -> Any:
    """Run the model on one micro-batch (inside the trainer's autocast); not called under PP.

    Stops at the first non-None result (mm-core's default calls ``model(**batch)``).

    :param batch: what ``get_batch`` returned.
    :param model: what ``parallelize_model`` returned.
    :param runtime: device, process group and mesh of this process.
    :returns: the model's output, handed to ``loss_func``.
    """


@hookspec(firstresult=True)
def loss_func(output: Any, batch: Any, runtime: Runtime) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the micro-batch's loss and the metrics to log.

    A ``tokens`` entry in metrics is summed over micro-batches and reported as tokens/s; a ``flops`` entry (this
    rank's forward + backward model FLOPs) as TFLOP/s and MFU. Stops at the first non-None result.

    :param output: what ``forward_step`` (or, under PP, the plan's ``pipeline.post``) returned.
    :param batch: what ``get_batch`` returned.
    :param runtime: device, process group and mesh of this process.
    :returns: ``(loss, metrics)``: a scalar tensor and a dict of floats.
    """


# --- after training ----------------------------------------------------------


@hookspec
def after_training(config: Config, runtime: Runtime, checkpoint: Path | None) -> None:
    """Called on every rank once training ends (every plugin's implementation runs).

    :param config: the validated run config.
    :param runtime: device, process group and mesh of this process.
    :param checkpoint: the last checkpoint directory saved, or None.
    """


# --- other subcommands ---------------------------------------------------------


@hookspec(firstresult=True)
def inference(config: Config, runtime: Runtime) -> Any:
    """Run ``mm infer``: generate from the config's ``inference`` section.

    Stops at the first non-None result.

    :param config: the validated config (task ``"infer"``).
    :param runtime: device, process group and mesh of this process.
    :returns: anything not None (the paths written, say) once done.
    """


@hookspec(firstresult=True)
def extract_features(config: Config, runtime: Runtime) -> Any:
    """Run ``mm extract``: encode the dataset once into feature shards.

    Stops at the first non-None result.

    :param config: the validated config (task ``"extract"``).
    :param runtime: device, process group and mesh of this process.
    :returns: anything not None (the feature directory, say) once done.
    """


@hookspec
def register_converters(registry: Any) -> None:
    """Add checkpoint converters to mm-convert's registry (every plugin's implementation runs).

    :param registry: an ``mm_convert.registry.Registry``; call ``registry.add(ConverterClass)`` for each converter.
    """
