"""The collectives of encoder data parallelism (``model.enable_encoder_dp``, see ``encoder_engines``): raw batches
scattered from a group's rank 0 to its ranks, and the features they encode gathered back on every rank."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

Batch = dict[str, Any]


def _split(batch: Batch) -> tuple[dict[str, tuple[torch.Size, torch.dtype]], Batch]:
    shapes = {k: (v.shape, v.dtype) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    return shapes, {k: v for k, v in batch.items() if k not in shapes}


def scatter_batches(batches: list[Batch] | None, group: ProcessGroup, device: torch.device) -> Batch:
    """Batch i of the group's rank 0 list on the group's rank i, its tensors on ``device`` (point to point)."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    headers: list[Any] = [_split(b) for b in batches] if rank == 0 else [None] * size
    mine: list[Any] = [None]
    dist.scatter_object_list(mine, headers if rank == 0 else None, group_src=0, group=group)
    shapes, out = mine[0]
    if rank == 0:
        ops = [dist.P2POp(dist.isend, batches[dst][key].to(device).contiguous(), dist.get_global_rank(group, dst),
                          group)
               for dst in range(1, size) for key in headers[dst][0]]
        out.update({key: batches[0][key].to(device) for key in shapes})
    else:
        out.update({key: torch.empty(shape, dtype=dtype, device=device) for key, (shape, dtype) in shapes.items()})
        ops = [dist.P2POp(dist.irecv, out[key], dist.get_global_rank(group, 0), group) for key in shapes]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    return out


def gather_batches(batch: Batch, group: ProcessGroup) -> list[Batch]:
    """Every rank's ``batch`` of ``group`` in rank order, on every rank (tensors of any shapes, padded to send)."""
    size = dist.get_world_size(group)
    headers: list[Any] = [None] * size
    dist.all_gather_object(headers, _split(batch), group=group)
    out = [dict(rest) for _, rest in headers]
    for key in headers[0][0]:
        numels = [shapes[key][0].numel() for shapes, _ in headers]
        flat = batch[key].reshape(-1)
        flat = torch.cat([flat, flat.new_zeros(max(numels) - flat.numel())])
        parts = [torch.empty_like(flat) for _ in range(size)]
        dist.all_gather(parts, flat, group=group)
        for rank, part in enumerate(parts):
            out[rank][key] = part[: numels[rank]].view(headers[rank][0][key][0])
    return out
