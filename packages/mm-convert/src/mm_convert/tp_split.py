"""Megatron's tensor-parallel split of a checkpoint's tensors (``mp_rank_TT``) and its merge, for any converter.

A converter names, per key, how a tensor splits: ``(dim, parts)``, the tensor made of ``parts`` equal fused parts
along ``dim`` (Megatron's GLU ``linear_fc1`` is gate then up: 2 parts), each part chunked over the ranks and a
rank's pieces concatenated in order; None keeps the tensor whole on every rank (norms, biases of row-parallel
linears). Column-parallel linears split their weight along dim 0, row-parallel ones along dim 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mm_convert.errors import ConvertError
from mm_convert.sources import TensorSource

Split = tuple[int, int]
SplitRule = Callable[[str], Split | None]


def _piece(tensor: torch.Tensor, split: Split, tp_size: int, rank: int) -> torch.Tensor:
    dim, parts = split
    return torch.cat([part.chunk(tp_size, dim)[rank] for part in tensor.chunk(parts, dim)], dim).contiguous()


def _whole(pieces: list[torch.Tensor], split: Split) -> torch.Tensor:
    dim, parts = split
    fused = [piece.chunk(parts, dim) for piece in pieces]
    return torch.cat([torch.cat([f[p] for f in fused], dim) for p in range(parts)], dim)


def split_tp(tensors: TensorSource, tp_size: int, rule: SplitRule,
             option: str = "--cfg.target_parallel_config.tp_size") -> list[TensorSource]:
    """One TensorSource per tensor-parallel rank (read lazily): split tensors chunked, the rest on every rank.

    A tensor whose split dim (each fused part) ``tp_size`` does not divide is one ConvertError naming ``option``.
    """
    if tp_size < 1:
        raise ConvertError(f"{option} must be at least 1, got {tp_size}")
    for key in tensors:
        split = rule(key)
        if split is not None and tensors.meta(key).shape[split[0]] % (tp_size * split[1]):
            raise ConvertError(f"{option} {tp_size} does not split {key} {tuple(tensors.meta(key).shape)} "
                               f"(dim {split[0]}{f' of {split[1]} fused parts' if split[1] > 1 else ''})")
    if tp_size == 1:
        return [tensors]

    def rank(r: int) -> TensorSource:
        def piece(key: str, tensor: torch.Tensor) -> torch.Tensor:
            split = rule(key)
            return tensor if split is None else _piece(tensor, split, tp_size, r)

        metas = {k: piece(k, tensors.meta(k)) for k in tensors}
        return TensorSource(metas, lambda key: piece(key, tensors[key]), f"{tensors.where} (tp rank {r})")

    return [rank(r) for r in range(tp_size)]


def merge_tp(sources: list[TensorSource], rule: SplitRule) -> TensorSource:
    """The whole tensors of the tensor-parallel ranks' sources (split ones joined, the others from rank 0)."""
    first = sources[0]
    if len(sources) == 1:
        return first
    for source in sources[1:]:
        if set(source) != set(first):
            odd = sorted(set(source) ^ set(first))
            raise ConvertError(f"{source.where} and {first.where} hold different keys: {', '.join(odd[:8])}")

    def whole(key: str, read: Callable[[TensorSource], torch.Tensor]) -> torch.Tensor:
        split = rule(key)
        return read(first) if split is None else _whole([read(s) for s in sources], split)

    metas = {k: whole(k, lambda s, k=k: s.meta(k)) for k in first}
    return TensorSource(metas, lambda key: whole(key, lambda s: s[key]), first.where)
