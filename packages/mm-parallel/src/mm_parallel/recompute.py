"""Activation checkpointing (recompute) of the modules named by ``recompute_modules`` patterns."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

from mm_parallel.patterns import expand, named_modules, outermost


def apply_recompute(model: torch.nn.Module, modules: Sequence[str] = (), use_reentrant: bool = True) -> torch.nn.Module:
    """Wrap each module matched by ``modules`` so its activations are recomputed in backward; returns ``model``.

    A module inside another matched one is left alone: recomputing it twice would gain nothing.
    """
    if not modules:
        return model
    impl = CheckpointImpl.REENTRANT if use_reentrant else CheckpointImpl.NO_REENTRANT
    paths = named_modules(model)
    for name, module in outermost(expand(modules, model, "parallel.fsdp2.recompute_modules")):
        parent_name, _, child = name.rpartition(".")
        paths[parent_name].register_module(child, checkpoint_wrapper(module, checkpoint_impl=impl))
    return model
