"""One batch per context-parallel group: its rank 0 reads, the others receive (tensors broadcast, the rest pickled)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from mm_core.data_iter import DataIterator
from mm_core.defaults import to_device
from mm_core.runtime import Runtime
from mm_models_video.flow_matching import noise_seeds


def broadcast_batch(batch: dict[str, Any] | None, group: ProcessGroup, device: torch.device) -> dict[str, Any]:
    """Rank 0 of ``group``'s batch on every rank of it, its tensors on ``device``."""
    first = dist.get_rank(group) == 0
    header: list[Any] = [None]
    if first:
        shapes = {k: (v.shape, v.dtype) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        header = [(shapes, {k: v for k, v in batch.items() if k not in shapes})]
    dist.broadcast_object_list(header, group=group, group_src=0, device=device)
    shapes, out = header[0]
    for key, (shape, dtype) in shapes.items():
        tensor = batch[key].to(device).contiguous() if first else torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(tensor, group=group, group_src=0)
        out[key] = tensor
    return out


def seeded_batch(data_iterator: DataIterator, seed: int) -> dict[str, Any]:
    """The next batch as read, with per-sample noise seeds from (``seed``, epoch, index) of its items."""
    batch = next(data_iterator)
    batch["noise_seeds"] = noise_seeds(seed, batch["epoch"], batch["index"])
    return batch


def read_seeded_batch(data_iterator: DataIterator, runtime: Runtime) -> dict[str, Any]:
    """The next batch on the device, with per-sample noise seeds from (training seed, epoch, index) of its items.

    With context parallelism only cp rank 0 reads it; the other ranks of its group receive it.
    """
    group = runtime.submesh("cp").get_group() if runtime.dims["cp"] > 1 else None
    batch = None
    if group is None or dist.get_rank(group) == 0:
        batch = seeded_batch(data_iterator, runtime.config.training.seed)
    if group is None:
        return to_device(batch, runtime.device)
    return broadcast_batch(batch, group, runtime.device)
