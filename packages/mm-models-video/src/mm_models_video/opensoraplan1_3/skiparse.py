"""Skiparse: OpenSoraPlan 1.3's sparse self-attention over token subsets (strided or grouped), as batch folding.

With ``n = sparse_n``, the token sequence is padded to a multiple of n² (padded keys masked). The *strided* subset
of token ``s`` is ``s mod n`` (every n-th token attends to each other, the release's ``'(g k) -> g (k b)'``); the
*grouped* subset is ``(s // n) mod n`` (runs of n neighbours, n² apart, ``'(n m k) -> (n k) (m b)'``). Each subset
becomes one more batch element, so attention over it is plain SDPA on a sequence n times shorter. Tensors are
batch-first: [B, S, ...]; the folded batch is ``(subset, B)``, subset outer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The release's additive biases: masked (padding) video tokens and the keys Skiparse pads the sequence with.
MASKED_BIAS = -10000.0
SPARSE_PAD_BIAS = -9980.0


def subset_of(positions: torch.Tensor, sparse_n: int, grouped: bool) -> torch.Tensor:
    """The Skiparse subset of each token position: ``s mod n`` (strided) or ``(s // n) mod n`` (grouped)."""
    return (positions // sparse_n) % sparse_n if grouped else positions % sparse_n


def padded_length(length: int, sparse_n: int) -> int:
    """``length`` rounded up to a multiple of ``sparse_n``²."""
    block = sparse_n * sparse_n
    return -(-length // block) * block


def fold(x: torch.Tensor, sparse_n: int, grouped: bool) -> torch.Tensor:
    """[B, S, ...] (S a multiple of n²) -> [n·B, S/n, ...]: each token subset a batch element of its own."""
    n, batch, length, rest = sparse_n, x.shape[0], x.shape[1], x.shape[2:]
    if grouped:  # token s = (block, subset, i): subset (s // n) mod n
        x = x.reshape(batch, length // (n * n), n, n, *rest).movedim(2, 0)
    else:  # token s = (g, subset): subset s mod n
        x = x.reshape(batch, length // n, n, *rest).movedim(2, 0)
    return x.reshape(n * batch, length // n, *rest)


def unfold(x: torch.Tensor, sparse_n: int, grouped: bool) -> torch.Tensor:
    """The inverse of :func:`fold`: [n·B, S/n, ...] -> [B, S, ...]."""
    n, sub, rest = sparse_n, x.shape[1], x.shape[2:]
    batch = x.shape[0] // n
    if grouped:
        x = x.reshape(n, batch, sub // n, n, *rest).movedim(0, 2)
    else:
        x = x.reshape(n, batch, sub, *rest).movedim(0, 2)
    return x.reshape(batch, sub * n, *rest)


def pad_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    """[B, S, ...] zero-padded along S to ``length`` tokens."""
    if x.shape[1] == length:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], length - x.shape[1], *x.shape[2:])], dim=1)


def key_bias(video_bias: torch.Tensor | None, batch: int, length: int, sparse_n: int, grouped: bool,
             like: torch.Tensor) -> torch.Tensor | None:
    """The SDPA mask [n·B, 1, 1, S'/n] of the folded keys: the video bias, the Skiparse padding masked.

    ``video_bias``: [B, S] additive bias (0 keep, -10000 masked) or None (every token kept). None when nothing is
    masked at all.
    """
    padded = padded_length(length, sparse_n) if sparse_n > 1 else length
    if video_bias is None and padded == length:
        return None
    bias = like.new_zeros(batch, length) if video_bias is None else video_bias.to(like.dtype)
    if padded > length:
        bias = torch.cat([bias, bias.new_full((batch, padded - length), SPARSE_PAD_BIAS)], dim=1)
    if sparse_n > 1:
        bias = fold(bias, sparse_n, grouped)
    return bias[:, None, None, :]


def skiparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sparse_n: int,
    grouped: bool,
    video_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Self-attention of q, k, v [B, S, H, D] within each Skiparse subset; ``sparse_n`` 1 is dense attention.

    ``video_bias``: [B, S] additive key bias (0 keep, -10000 masked) or None. Returns [B, S, H, D].
    """
    batch, length = q.shape[:2]
    mask = key_bias(video_bias, batch, length, sparse_n, grouped, q)
    if sparse_n > 1:
        padded = padded_length(length, sparse_n)
        q, k, v = (fold(pad_tokens(t, padded), sparse_n, grouped) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    out = out.transpose(1, 2)
    if sparse_n > 1:
        out = unfold(out, sparse_n, grouped)[:, :length]
    return out


def skiparse_attention_at(
    q: torch.Tensor,
    q_positions: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sparse_n: int,
    grouped: bool,
    video_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Queries q [B, s, H, D] at sequence positions ``q_positions`` [s] attending to the whole sequence's k, v
    [B, S, H, D] within their Skiparse subsets (dense attention under the subset mask).

    Positions from S on are padding: they attend to every key (their output is discarded). Returns [B, s, H, D].
    """
    length = k.shape[1]
    keys = torch.arange(length, device=q.device)
    same = subset_of(q_positions, sparse_n, grouped)[:, None] == subset_of(keys, sparse_n, grouped)[None, :]
    same = same | (q_positions >= length)[:, None]
    bias = torch.where(same, 0.0, MASKED_BIAS).to(q.dtype)[None, None]
    if video_bias is not None:
        bias = bias + video_bias.to(q.dtype)[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias)
    return out.transpose(1, 2)
