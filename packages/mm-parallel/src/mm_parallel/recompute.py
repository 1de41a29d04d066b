"""Activation checkpointing (recompute) of the modules named by ``recompute_modules`` patterns.

Two modes: ``full`` recomputes the whole module in backward; ``selective`` recomputes everything but the
attention kernels, whose outputs are kept (torch.utils.checkpoint's selective policy). Attention is the
costliest op to redo on long sequences and its outputs are small next to the MLP's activations, so
``selective`` trades a little memory for most of the recompute time. Both give the gradients of no recompute.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.attention.varlen  # noqa: F401  (registers torch.ops.torch_attn._varlen_attn)
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import create_selective_checkpoint_contexts

from mm_core.config import Config
from mm_core.errors import ConfigError
from mm_core.plan import ParallelPlan
from mm_parallel.patterns import expand, outermost, replace_module

log = logging.getLogger("mm")

RECOMPUTE_MODES = ("full", "selective")

# The fused attention kernels F.scaled_dot_product_attention dispatches to (CUDA, CPU, other backends), and
# torch's variable-length attention (packed rows).
ATTENTION_OPS = [
    torch.ops.torch_attn._varlen_attn.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_dot_product_fused_attention_overrideable.default,
]

# Keeps the outputs of the attention kernels, recomputes every other op.
keep_attention = functools.partial(create_selective_checkpoint_contexts, ATTENTION_OPS)


class CountAttention(TorchDispatchMode):
    """Counts the fused attention kernels that run inside it (forwards and recomputes; their backward is not one).

    With selective recompute a block's attention runs once per step; with full recompute, twice.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func in ATTENTION_OPS
        return func(*args, **(kwargs or {}))


def apply_recompute(
    model: torch.nn.Module, modules: Sequence[str] = (), use_reentrant: bool = True, mode: str = "full"
) -> torch.nn.Module:
    """Wrap each module matched by ``modules`` so its activations are recomputed in backward; returns ``model``.

    ``mode`` is ``full`` or ``selective`` (keep attention outputs; always non-reentrant, which the selective
    policy needs). A module inside another matched one is left alone: recomputing it twice would gain nothing.
    """
    if mode not in RECOMPUTE_MODES:
        raise ConfigError(f"parallel.fsdp2.recompute_mode must be one of {', '.join(RECOMPUTE_MODES)}, got {mode!r}")
    if not modules:
        return model
    if mode == "selective":
        options = {"checkpoint_impl": CheckpointImpl.NO_REENTRANT, "context_fn": keep_attention}
    else:
        options = {"checkpoint_impl": CheckpointImpl.REENTRANT if use_reentrant else CheckpointImpl.NO_REENTRANT}
    for _, module in outermost(expand(modules, model, "parallel.fsdp2.recompute_modules")):
        replace_module(model, module, checkpoint_wrapper(module, **options))
    return model


def recompute_settings(parallel: Config, plan: ParallelPlan) -> tuple[Sequence[str], str]:
    """The recompute patterns and mode: ``parallel.fsdp2.recompute_modules``, or Megatron's flags in
    ``parallel.recompute`` (``--recompute-granularity full --recompute-method block --recompute-num-layers N``)
    turned into patterns over the plan's layer list."""
    fsdp, megatron = parallel.fsdp2, parallel.recompute
    if not megatron.granularity:
        return fsdp.recompute_modules, fsdp.recompute_mode
    if fsdp.recompute_modules:
        raise ConfigError("parallel.recompute (Megatron's --recompute-* flags) and parallel.fsdp2.recompute_modules "
                          "are both set; give one")
    if megatron.granularity == "selective":
        log.warning("warning: --recompute-granularity selective recomputes Megatron's unfused core attention; "
                    "mm's attention kernels never store it, so nothing is recomputed "
                    "(parallel.fsdp2.recompute_mode=selective recomputes everything but attention)")
        return (), fsdp.recompute_mode
    if plan.pipeline is None:
        raise ConfigError("parallel.recompute: this plugin's parallel plan names no layer list to recompute; "
                          "name the modules in parallel.fsdp2.recompute_modules instead")
    layers = plan.pipeline.layers
    path = list(layers.values())[-1] if isinstance(layers, Mapping) else layers
    if megatron.method == "uniform":
        return (f"{path}.{{*}}",), "full"
    count = megatron.num_layers
    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"parallel.recompute.num_layers must be a positive number of layers with method block, "
                          f"got {count!r}")
    return (f"{path}.{{0-{count - 1}}}",), "full"
