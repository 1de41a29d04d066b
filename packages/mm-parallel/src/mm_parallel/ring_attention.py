"""Ring attention: key/value blocks travel around the group; partial outputs merge by their log-sum-exp.

Double ring (MindSpeed-MM's ``cp_window_size``): the ring is cut into windows of neighbouring ranks. Blocks travel
around the inner ring of a window while each rank's window block goes on to the next window over the outer ring,
so the slow hops between windows (nodes) are few and overlap a whole inner round.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from mm_parallel.block_attention import block_backward, block_forward
from mm_parallel.context import SequenceLayout

Block = tuple[slice, slice, torch.Tensor | None, bool]
KV_TAG, GRAD_TAG, OUTER_KV_TAG, OUTER_GRAD_TAG = 0, 1, 2, 3


@dataclass(frozen=True)
class Ring:
    """The groups blocks travel over: ``inner`` (the whole ring, or a window of it) and the ``outer`` ring of windows.

    Ring rank ``window * inner_size + inner_rank`` is the rank a SequenceLayout places shards by.
    """

    inner: ProcessGroup
    outer: ProcessGroup | None = None


@lru_cache(maxsize=256)
def _plan(layout: SequenceLayout, q_rank: int, kv_rank: int, causal: bool) -> tuple[Block, ...]:
    """(query rows, key rows, mask, diagonal) of the blocks where some query sees some key.

    Causal blocks are the zigzag chunks, so each is entirely visible, diagonal (query i sees keys up to i: no mask,
    ``diagonal`` True, which the flash kernels take as ``is_causal``) or skipped; a key is visible when it is not
    padding (and, causal, not after the query). Only blocks with padding keys carry a mask. Every query of a kept
    block sees at least one key, so no row of a block is entirely masked.
    """
    q_pos, k_pos = layout.ring_positions(q_rank), layout.ring_positions(kv_rank)
    step = layout.chunk_len if causal else len(q_pos)
    blocks = []
    for qs in range(0, len(q_pos), step):
        for ks in range(0, len(k_pos), step):
            keys, queries = k_pos[ks : ks + step], q_pos[qs : qs + step]
            mask = (keys < layout.length).expand(len(queries), -1)
            if causal:
                mask = mask & (keys[None, :] <= queries[:, None])
            if not mask.any():
                continue
            rows, cols = slice(qs, qs + step), slice(ks, ks + step)
            if mask.all():
                blocks.append((rows, cols, None, False))
            elif causal and mask.shape[0] == mask.shape[1] and torch.equal(mask, mask.new_ones(mask.shape).tril()):
                blocks.append((rows, cols, None, True))
            else:
                blocks.append((rows, cols, mask, False))
    return tuple(blocks)


def _send_next(tensor: torch.Tensor, group: ProcessGroup, tag: int) -> tuple[torch.Tensor, list]:
    """Start sending ``tensor`` to the next rank and receiving the previous rank's into a new buffer."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    recv = torch.empty_like(tensor)
    ops = [
        dist.P2POp(dist.isend, tensor, dist.get_global_rank(group, (rank + 1) % size), group, tag),
        dist.P2POp(dist.irecv, recv, dist.get_global_rank(group, (rank - 1) % size), group, tag),
    ]
    return recv, dist.batch_isend_irecv(ops)


def _around(kv: torch.Tensor, group: ProcessGroup) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (owner rank, block) for every rank's key/value block; the next block is in flight while one is used."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    for step in range(size):
        last = step == size - 1
        if not last:
            following, works = _send_next(kv, group, KV_TAG)
        yield (rank - step) % size, kv
        if not last:
            for work in works:
                work.wait()
            kv = following


def _pass(tensor: torch.Tensor, group: ProcessGroup, tag: int) -> torch.Tensor:
    """Send ``tensor`` to the next rank of ``group``; the previous rank's, once it has arrived."""
    if dist.get_world_size(group) == 1:
        return tensor
    received, works = _send_next(tensor, group, tag)
    for work in works:
        work.wait()
    return received


def _visits(kv: torch.Tensor, ring: Ring) -> Iterator[tuple[int, torch.Tensor, bool]]:
    """Yield (owner ring rank, block, whether the inner round ends) for every rank's block.

    Each outer step starts sending this window's block to the next window, then goes round the inner ring.
    """
    inner_size = dist.get_world_size(ring.inner)
    windows, window = (1, 0) if ring.outer is None else (dist.get_world_size(ring.outer), dist.get_rank(ring.outer))
    for step in range(windows):
        last = step == windows - 1
        if not last:
            following, works = _send_next(kv, ring.outer, OUTER_KV_TAG)
        source = (window - step) % windows
        for index, (inner_owner, block) in enumerate(_around(kv, ring.inner)):
            yield source * inner_size + inner_owner, block, index == inner_size - 1
        if not last:
            for work in works:
                work.wait()
            kv = following


class _RingAttention(torch.autograd.Function):
    """Exact attention of this ring rank's queries over the keys/values of every rank of ``ring``, with backward."""

    @staticmethod
    def forward(ctx, q, k, v, ring: Ring, rank: int, layout: SequenceLayout, causal: bool, scale: float):
        out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
        aux = None
        for owner, kv, _ in _visits(torch.stack([k, v]), ring):
            for rows, cols, mask, diagonal in _plan(layout, rank, owner, causal):
                block_out, block_lse, block_aux = block_forward(
                    q[..., rows, :], kv[0, ..., cols, :], kv[1, ..., cols, :], mask, diagonal, scale
                )
                aux = aux if block_aux is None else block_aux
                merged = torch.logaddexp(lse[..., rows], block_lse)
                out[..., rows, :] = out[..., rows, :] * (lse[..., rows] - merged).exp().unsqueeze(-1) + block_out * (
                    block_lse - merged
                ).exp().unsqueeze(-1)
                lse[..., rows] = merged
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.ring, ctx.rank, ctx.layout, ctx.causal, ctx.scale, ctx.aux = ring, rank, layout, causal, scale, aux
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        ring, rank = ctx.ring, ctx.rank
        delta = (grad.float() * out.float()).sum(-1)
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        # The gradient of a key/value block travels with it round the inner ring and is back with the window's
        # holder one pass after the last use; the outer ring then carries it on with the block, home at the end.
        dkv = torch.zeros((2, *k.shape), dtype=torch.float32, device=k.device)
        home = torch.zeros_like(dkv)
        for owner, kv, round_ends in _visits(torch.stack([k, v]), ring):
            for rows, cols, mask, diagonal in _plan(ctx.layout, rank, owner, ctx.causal):
                bq, bk, bv = block_backward(
                    q[..., rows, :],
                    kv[0, ..., cols, :],
                    kv[1, ..., cols, :],
                    mask,
                    diagonal,
                    ctx.scale,
                    grad[..., rows, :],
                    out[..., rows, :],
                    lse[..., rows],
                    delta[..., rows],
                    ctx.aux,
                )
                dq[..., rows, :] += bq
                dkv[0, ..., cols, :] += bk
                dkv[1, ..., cols, :] += bv
            dkv = _pass(dkv, ring.inner, GRAD_TAG)
            if round_ends:
                home = dkv if ring.outer is None else _pass(home + dkv, ring.outer, OUTER_GRAD_TAG)
                dkv = torch.zeros_like(dkv)
        return dq.to(q.dtype), home[0].to(k.dtype), home[1].to(v.dtype), None, None, None, None, None


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: ProcessGroup,
    layout: SequenceLayout,
    causal: bool,
    scale: float,
    window: tuple[ProcessGroup, ProcessGroup] | None = None,
) -> torch.Tensor:
    """Attention of [b, h, s, d] ring shards laid out by ``layout`` over the whole sequence of ``group``.

    ``window``: the (inner, outer) groups of a double ring over the same ranks; None: one ring.
    """
    ring = Ring(group) if window is None else Ring(*window)
    return _RingAttention.apply(q, k, v, ring, dist.get_rank(group), layout, causal, scale)
