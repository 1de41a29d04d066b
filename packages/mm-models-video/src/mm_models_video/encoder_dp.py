"""Encoder data parallelism (``model.enable_encoder_dp``): the ranks of a context- or tensor-parallel group encode
different samples and share the features.

Without it every rank of such a group encodes the same sample each step. With it the group's rank 0 reads the next
``size`` batches, rank i encodes the i-th, the features are all-gathered, and the group trains on them one after
another over the next ``size`` steps: the same batches in the same order, each encoded once instead of ``size``
times.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from mm_models_video.read_ahead import ReadAhead

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


class EncoderDP:
    """Serves a group's batches, each encoded by one rank of ``group`` (``encode``: raw batch -> features).

    Call :meth:`next` on every rank of the group each step with ``read`` (the next raw batch; only the group's
    rank 0 calls it). With ``ahead`` (the data iterator's :class:`ReadAhead`) a checkpoint records the position
    after the batch trained on. ``encode_calls`` counts this rank's encodes.
    """

    def __init__(self, group: ProcessGroup, encode: Callable[[Batch], Batch], device: torch.device,
                 ahead: ReadAhead | None = None) -> None:
        self.group, self.encode, self.device, self.ahead = group, encode, device, ahead
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.pending: deque[tuple[Batch, dict | None]] = deque()
        self.encode_calls = 0

    def _read(self, read: Callable[[], Batch]) -> tuple[Batch, dict | None]:
        batch = read()
        return batch, self.ahead.position() if self.ahead is not None else None

    def next(self, read: Callable[[], Batch]) -> Batch:
        """The features of the group's next batch."""
        if not self.pending:
            raws = [self._read(read) for _ in range(self.size)] if self.rank == 0 else [(None, None)] * self.size
            own = scatter_batches([b for b, _ in raws] if self.rank == 0 else None, self.group, self.device)
            self.encode_calls += 1
            features = gather_batches(self.encode(own), self.group)
            self.pending.extend(zip(features, [p for _, p in raws]))
        features, position = self.pending.popleft()
        if position is not None:
            self.ahead.served(position)
        return features
