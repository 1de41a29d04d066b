"""The attention plugins call: plain SDPA on one rank, Ulysses, ring or USP over a context-parallel group."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributed import ProcessGroup
from torch.distributed.device_mesh import DeviceMesh

from mm_core.errors import PluginError
from mm_parallel.context import ContextParallel, SequenceLayout, active_scope, build_context, true_length
from mm_parallel.ring_attention import ring_attention
from mm_parallel.ulysses import check_heads, heads_to_sequence, sequence_to_heads

LAYOUTS = ("bshd", "bhsd")


def _local_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SequenceLayout, causal: bool, scale: float
) -> torch.Tensor:
    """SDPA over the whole padded sequence in order, padded keys masked out."""
    if layout.padded == layout.length:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    positions = torch.arange(layout.padded, device=q.device)
    mask = (positions < layout.length).expand(layout.padded, -1)
    if causal:
        mask = mask & (positions[None, :] <= positions[:, None])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _resolve(cp_group: ContextParallel | ProcessGroup | DeviceMesh | None, mode: str | None) -> ContextParallel | None:
    """The groups to run on: ``cp_group`` (a group or mesh in ``mode``), else the active scope's once it has split."""
    if cp_group is None:
        scope = active_scope()
        return scope.cp if scope is not None and scope.length is not None else None
    if isinstance(cp_group, ContextParallel):
        return cp_group
    return build_context(cp_group, mode or "ulysses")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    cp_group: ContextParallel | ProcessGroup | DeviceMesh | None = None,
    mode: str | None = None,
    layout: str = "bshd",
    seq_len: int | None = None,
) -> torch.Tensor:
    """Softmax attention of this rank's sequence shard over the whole sequence; equals SDPA on the full sequence.

    ``cp_group``: a ContextParallel, or a cp process group / 1-D mesh run in ``mode`` (ulysses or ring); default the
    active scope's (``context_parallel``, which the engine opens for the model's forward) once the sequence is split;
    none or one rank: plain SDPA. ``seq_len``: the unpadded length, default the active scope's split (none: no
    padding). Keys/values with fewer heads (GQA) are repeated to the query heads.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    q, k, v = (t.transpose(1, 2) if layout == "bshd" else t for t in (q, k, v))
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    cp = _resolve(cp_group, mode)
    if cp is None or cp.size == 1:
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
        )
        return out.transpose(1, 2) if layout == "bshd" else out
    if k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    seq = cp.layout(true_length(cp, seq_len, q.shape[2]))
    if seq.padded != q.shape[2] * cp.size:
        raise PluginError(
            f"attention got {q.shape[2]} tokens per rank, but a {seq.length}-token sequence is {seq.padded} padded "
            f"tokens over {cp.size} cp ranks: split it with mm_parallel.split_sequence in the forward or split_inputs "
            "/ split_outputs in the plugin's ContextParallelPlan"
        )
    if cp.ulysses_group is not None:
        check_heads(q.shape[1], cp.ulysses_size, cp.mode)
        q, k, v = (heads_to_sequence(t, cp.ulysses_group) for t in (q, k, v))
    if cp.ring_group is not None:
        out = ring_attention(q, k, v, cp.ring_group, seq, causal, scale, cp.ring_window)
    else:
        out = _local_attention(q, k, v, seq, causal, scale)
    if cp.ulysses_group is not None:
        out = sequence_to_heads(out, cp.ulysses_group)
    return out.transpose(1, 2) if layout == "bshd" else out
