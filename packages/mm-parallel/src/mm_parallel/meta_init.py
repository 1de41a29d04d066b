"""Models built on the meta device: allocate after sharding, initialize, then load pretrained weights."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.tensor import DTensor

from mm_core.checkpoint import load_model_state
from mm_core.errors import CheckpointError, reason

# A plugin's source of pretrained weights: a callable returning the full state dict (called on
# rank 0 only), or the directory of an mm (DCP) checkpoint, which every rank reads its shards of.
Pretrained = Callable[[], Mapping[str, torch.Tensor]] | str | Path


def is_meta(model: torch.nn.Module) -> bool:
    """True when any parameter or buffer of ``model`` is on the meta device."""
    return any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))


def init_weights(model: torch.nn.Module) -> None:
    """Initialize freshly allocated weights: the model's ``init_weights()``, else every ``reset_parameters()``."""
    with torch.no_grad():
        if callable(getattr(model, "init_weights", None)):
            model.init_weights()
            return
        for module in model.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()


def load_pretrained(model: torch.nn.Module, source: Pretrained) -> None:
    """Load ``source`` into ``model`` (sharded or not) without a full copy on every rank."""
    if isinstance(source, (str, Path)):
        load_model_state(Path(source), model)
        return
    distributed = dist.is_initialized()
    state = source() if not distributed or dist.get_rank() == 0 else {}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=distributed, strict=True)
    try:
        set_model_state_dict(model, state, options=options)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"pretrained weights do not match the model: {reason(exc)}") from exc


def materialize(
    model: torch.nn.Module, device: torch.device, pretrained: Pretrained | None = None, offload: bool = False
) -> None:
    """Allocate a meta model on ``device`` (sharded parameters on the CPU when ``offload``), initialize, load."""
    model.to_empty(device="cpu" if offload else device)
    if offload and device.type != "cpu":
        # FSDP2 keeps offloaded shards on the CPU; buffers and unsharded (ignored) parameters run on the device.
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if not isinstance(tensor, DTensor):
                tensor.data = tensor.data.to(device)
    init_weights(model)
    if pretrained is not None:
        load_pretrained(model, pretrained)
