"""One batch per context-parallel group: its rank 0 reads, the others receive (tensors broadcast, the rest pickled)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup


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
