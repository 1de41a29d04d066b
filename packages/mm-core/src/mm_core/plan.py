"""The typed parallel plan: what a plugin's ``parallel_plan`` hook tells the engines about its model.

Built with keywords only, so a misspelt or unknown field fails where the plugin builds the plan, and each field
is checked there too. The trainer asks for the plan once and hands it to ``parallelize_model``; no engine calls
back into a plugin. Every field is optional until its engine is turned on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mm_core.errors import PluginError

Carry = torch.Tensor | tuple[torch.Tensor, ...]
"""What travels between pipeline stages: one tensor, or a tuple ``(hidden, *extras)``."""

Pretrained = str | Path | Callable[[], Mapping[str, torch.Tensor]]
"""A DCP checkpoint directory, or a function returning the full state dict (called on rank 0 only, and on
every rank under pipeline parallelism, where each stage needs other weights)."""


def _paths(owner: str, name: str, value: Any) -> tuple[str, ...]:
    """``value`` as a tuple of module paths, or a PluginError naming the field."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise PluginError(f"{owner}.{name} must be a list of module paths, got {value!r}")
    return tuple(value)


def _callable(owner: str, name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not callable(value):
        raise PluginError(f"{owner}.{name} must be a function, got {type(value).__name__}")


@dataclass(frozen=True, kw_only=True)
class PipelinePlan:
    """How pipeline parallelism (``parallel.pp.size > 1``) sees the model's forward: ``pre → layers → post``.

    Each pipeline rank keeps the layers of its stages, ``pre_modules`` when it runs the first stage and
    ``post_modules`` when it runs the last. ``forward_step`` is not called under PP: ``post``'s output goes to
    ``loss_func``. See docs/pipeline_parallel.md for a worked example.
    """

    layers: str | Mapping[str, str]
    """Path of the ``nn.ModuleList`` cut into stages (``"blocks"``). For several stacks in forward order (a VLM's
    vision tower, then its LLM) a mapping name -> path, ``{"vit": "model.visual.blocks", "llm": "model.layers"}``:
    the last is cut across the stages, the earlier ones run whole inside ``pre`` on the first stage."""

    pre: Callable[[torch.nn.Module, Any], Carry]
    """``pre(model, batch) -> carry``: everything before the first layer, on the first stage."""

    post: Callable[[torch.nn.Module, Carry, Any], Any]
    """``post(model, carry, batch) -> output``: everything after the last layer, on the last stage; its output goes
    to the plugin's ``loss_func`` as ``forward_step``'s would."""

    layer: Callable[[torch.nn.Module, Carry], Carry] | None = None
    """``layer(block, carry) -> carry``: one layer's step. None: ``block(hidden)``, or ``(block(*carry), *extras)``
    when the carry is a tuple (the extras pass every layer unchanged)."""

    pre_modules: Sequence[str] = ()
    """Paths of the modules, parameters or buffers ``pre`` uses; they live on the first stage only. Every parameter
    and persistent buffer must be in the layer stack, ``pre_modules`` or ``post_modules``; only weights tied
    between ``pre_modules`` and ``post_modules`` (an LLM's embedding and output head) may be shared."""

    post_modules: Sequence[str] = ()
    """Paths of the modules, parameters or buffers ``post`` uses; they live on the last stage only."""

    num_layers: Any = None
    """The plugin's own ``pipeline_num_layers`` (from its model section), used when ``parallel.pp.pipeline_num_layers``
    is not set: a list of layers per stage, or for several stacks a mapping name -> list (the earlier stacks only
    as ``[all, 0, ...]``)."""

    def __post_init__(self) -> None:
        owner = "PipelinePlan"
        layers = self.layers
        if isinstance(layers, Mapping):
            if not layers or not all(isinstance(k, str) and isinstance(v, str) for k, v in layers.items()):
                raise PluginError(f"{owner}.layers must map stack names to ModuleList paths, got {layers!r}")
        elif not isinstance(layers, str):
            raise PluginError(f"{owner}.layers must be the path of an nn.ModuleList, got {layers!r}")
        _callable(owner, "pre", self.pre)
        _callable(owner, "post", self.post)
        _callable(owner, "layer", self.layer, optional=True)
        object.__setattr__(self, "pre_modules", _paths(owner, "pre_modules", self.pre_modules))
        object.__setattr__(self, "post_modules", _paths(owner, "post_modules", self.post_modules))

    @property
    def stacks(self) -> tuple[tuple[str | None, str], ...]:
        """``(name, path)`` of every layer stack in forward order; the last is the one cut into stages."""
        return tuple(self.layers.items()) if isinstance(self.layers, Mapping) else ((None, self.layers),)


@dataclass(frozen=True, kw_only=True)
class ContextParallelPlan:
    """Where context parallelism (``parallel.cp.size > 1``) splits the model's sequence and gathers it again.

    The engine splits and gathers at these modules during the model's forward (and a pipeline stage's); in between
    every op is per token except attention, which the plugin computes with ``mm_parallel.attention`` so that it
    spans every rank's shard, padding masked. No module named: the plugin's forward splits and gathers itself
    (``mm_parallel.split_sequence`` / ``gather_sequence``), in the scope the engine opens for it. See
    docs/context_parallel.md.
    """

    split_inputs: Mapping[str, int] = field(default_factory=dict)
    """Module path -> sequence dim: the module's first positional input is split over the cp ranks before it
    runs (``{"predictor.blocks.0": 1}``: the tokens entering the first block); a recomputed module splits it again."""

    split_outputs: Mapping[str, int] = field(default_factory=dict)
    """Module path -> sequence dim: the module's output (each tensor of a tuple) is split after it runs (tables
    computed for the whole sequence, such as rotary embeddings, so each shard keeps its positions)."""

    gather_outputs: Mapping[str, int] = field(default_factory=dict)
    """Module path -> sequence dim: the module's output (each tensor of a tuple) is gathered from every cp rank,
    the split's padding dropped."""

    heads: int | None = None
    """Attention heads of the model: Ulysses and USP split them over their ranks, which the engine checks divide
    them before training starts. None: the first attention call checks."""

    def __post_init__(self) -> None:
        for name in ("split_inputs", "split_outputs", "gather_outputs"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, int) for k, v in value.items()
            ):
                raise PluginError(f"ContextParallelPlan.{name} must map module paths to dims, got {value!r}")
        if self.heads is not None and (not isinstance(self.heads, int) or self.heads < 1):
            raise PluginError(f"ContextParallelPlan.heads must be a positive number of heads, got {self.heads!r}")


TP_STYLES = ("colwise", "colwise_replicated", "rowwise", "sharded_norm", "vocab_embedding", "vocab_parallel")
"""The styles a :class:`TensorParallelPlan` layout gives a module (see its ``layout``)."""


def _dims(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, int) for k, v in value.items()):
        raise PluginError(f"{owner}.{name} must map module paths to dims, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class TensorParallelPlan:
    """How tensor parallelism (``parallel.tp.size > 1``) splits the model's layers over the ``tp`` ranks.

    Module paths are patterns (``blocks.{*}.attn.to_q``, as ``parallel.fsdp2``'s). Every trainable parameter the
    layout does not split is replicated on the tp ranks. With ``parallel.tp.sequence_parallel`` the activations
    between the split linears are sharded over the sequence instead (Megatron's sequence parallelism): they are
    split at ``split_inputs`` / ``split_outputs`` and gathered at ``gather_outputs``. See docs/tensor_parallel.md.
    """

    layout: Mapping[str, str]
    """Module pattern -> style. ``colwise``: an ``nn.Linear`` whose output features are split (its input gathered
    from the sequence shards first under sequence parallelism); ``colwise_replicated``: the same for an input every
    rank holds whole (the text of a cross-attention); ``rowwise``: an ``nn.Linear`` whose input features are split,
    its output summed over the ranks (reduce-scattered onto the sequence shards under sequence parallelism);
    ``sharded_norm``: an ``nn.RMSNorm`` over features a colwise linear split (q/k norms across all heads), its
    statistics summed over the ranks; ``vocab_embedding``: an ``nn.Embedding`` split over the vocabulary, its
    output whole on every rank; ``vocab_parallel``: the output ``nn.Linear``, its input whole on every rank and its
    logits left split over the vocabulary as a DTensor, for ``mm_parallel.vocab_parallel_cross_entropy``. A weight
    tied between a ``vocab_embedding`` and a ``vocab_parallel`` stays tied."""

    sequence_parallel: Sequence[str] = ()
    """Patterns of modules or parameters that meet the sequence shards under sequence parallelism (norms between
    the split linears, adaLN tables): replicated, their gradients summed over the tp ranks."""

    per_head: Sequence[str] = ()
    """Patterns of replicated modules or parameters applied to each of the heads a colwise linear split (per-head
    q/k RMSNorms): each rank's gradient covers its heads only, so it is summed over the tp ranks, with or without
    sequence parallelism (Megatron's qk_layernorm gradients)."""

    sequence_inputs: Mapping[str, Sequence[int]] = field(default_factory=dict)
    """Module pattern -> indices of positional inputs that every rank holds whole but that meet the sequence shards
    inside the module (a timestep embedding modulating the tokens): their gradients are summed over the tp ranks."""

    split_inputs: Mapping[str, int] = field(default_factory=dict)
    """Module path -> sequence dim: under sequence parallelism the module's first positional input is split."""

    split_outputs: Mapping[str, int] = field(default_factory=dict)
    """Module path -> sequence dim: under sequence parallelism the module's output (each tensor of a tuple) is split."""

    gather_outputs: Mapping[str, int] = field(default_factory=dict)
    """Module path -> sequence dim: under sequence parallelism the module's output (each tensor of a tuple) is
    gathered from the tp ranks."""

    sequence_dim: int = 1
    """The sequence dim of the activations the colwise linears take and the rowwise ones give."""

    divide: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Module pattern -> names of integer attributes that count what the colwise linears split (an attention's
    ``heads``): divided by the tp size, which must divide them."""

    heads: int | None = None
    """Attention heads, checked to divide by tp (and by tp × the Ulysses ranks under context parallelism)."""

    kv_heads: int | None = None
    """Key/value heads of grouped-query attention, checked like ``heads``; None: as many as ``heads``."""

    def __post_init__(self) -> None:
        owner = "TensorParallelPlan"
        layout = self.layout
        if not isinstance(layout, Mapping) or not layout or not all(isinstance(k, str) for k in layout):
            raise PluginError(f"{owner}.layout must map module patterns to styles, got {layout!r}")
        for pattern, style in layout.items():
            if style not in TP_STYLES:
                raise PluginError(f"{owner}.layout[{pattern!r}] is {style!r}; styles are {', '.join(TP_STYLES)}")
        object.__setattr__(self, "sequence_parallel", _paths(owner, "sequence_parallel", self.sequence_parallel))
        object.__setattr__(self, "per_head", _paths(owner, "per_head", self.per_head))
        for name in ("split_inputs", "split_outputs", "gather_outputs"):
            _dims(owner, name, getattr(self, name))
        for name, kind in (("sequence_inputs", int), ("divide", str)):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and not isinstance(v, str) and isinstance(v, Sequence)
                and all(isinstance(x, kind) for x in v)
                for k, v in value.items()
            ):
                raise PluginError(f"{owner}.{name} must map module patterns to lists of {kind.__name__}, got {value!r}")
        for name in ("heads", "kv_heads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise PluginError(f"{owner}.{name} must be a positive number of heads, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ParallelPlan:
    """A model as the engines see it (the result of the ``parallel_plan`` hook)."""

    fsdp_modules: Sequence[str] = ()
    """Module patterns FSDP2 shards as one unit each (``["blocks.{*}"]``), when ``fsdp2_config.yaml`` names no
    ``sub_modules_to_wrap``; also the blocks ``parallel.compile`` compiles by default."""

    fsdp_ignored: Sequence[str] = ()
    """Frozen modules FSDP2 leaves whole on every rank, besides ``parallel.fsdp2.ignored_modules``: those that run
    outside the model's forward (encoders that turn batches into features in ``get_batch``)."""

    pretrained: Pretrained | None = None
    """The weights to load after a meta-device model is allocated; None: the model's own initialization."""

    cp: ContextParallelPlan | None = None
    """Where context parallelism splits and gathers the sequence; None: the plugin does not support CP."""

    pipeline: PipelinePlan | None = None
    """How pipeline parallelism cuts the model; None: the plugin does not support PP."""

    tp: TensorParallelPlan | None = None
    """How tensor parallelism splits the layers; None: the plugin does not support TP."""

    lora_targets: Sequence[str] = ()
    """The modules LoRA adapts when ``model.lora.target_modules`` is not set: names or their dotted tails, ``*``
    for one name part (``attn1.to_q``, ``language_model.layers.*.mlp.up_proj``)."""

    module_aliases: Mapping[str, str] = field(default_factory=dict)
    """MindSpeed-MM's module paths -> this model's (``{"text_decoder.decoder.layers": "model.language_model.layers"}``):
    a ``parallel.fsdp2`` pattern (sub_modules_to_wrap, ignored_modules, recompute_modules) that starts with one is
    read as the model's path, so MindSpeed-MM's fsdp2_config.yaml runs unchanged."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "fsdp_modules", _paths("ParallelPlan", "fsdp_modules", self.fsdp_modules))
        object.__setattr__(self, "fsdp_ignored", _paths("ParallelPlan", "fsdp_ignored", self.fsdp_ignored))
        object.__setattr__(self, "lora_targets", _paths("ParallelPlan", "lora_targets", self.lora_targets))
        aliases = self.module_aliases
        if not isinstance(aliases, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in aliases.items()):
            raise PluginError(f"ParallelPlan.module_aliases must map module paths to module paths, got {aliases!r}")
        for name, kind in (("cp", ContextParallelPlan), ("pipeline", PipelinePlan), ("tp", TensorParallelPlan)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise PluginError(f"ParallelPlan.{name} must be a {kind.__name__}, got {type(value).__name__}")
        if self.pretrained is not None and not isinstance(self.pretrained, (str, Path)):
            _callable("ParallelPlan", "pretrained", self.pretrained)
