"""Ulysses: trade a sequence shard of all heads for the whole sequence of a share of the heads, and back."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from mm_core.errors import ConfigError


def _all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group: ProcessGroup) -> torch.Tensor:
    size = dist.get_world_size(group)
    send = torch.stack(x.chunk(size, scatter_dim)).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), gather_dim)


class _AllToAll(torch.autograd.Function):
    """Rank i sends its j-th slice along ``scatter_dim`` to rank j, which concatenates along ``gather_dim``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scatter_dim: int, gather_dim: int, group: ProcessGroup) -> torch.Tensor:
        ctx.dims, ctx.group = (scatter_dim, gather_dim), group
        return _all_to_all(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, gather_dim, scatter_dim, ctx.group), None, None, None


def check_heads(heads: int, ranks: int, mode: str) -> None:
    """Raise a ConfigError unless ``heads`` split evenly over the ``ranks`` that exchange them (Ulysses' ranks)."""
    if heads % ranks:
        degree = "cp size" if mode == "ulysses" else "ulysses_degree"
        raise ConfigError(
            f"parallel.cp.mode {mode} splits the {heads} attention heads over {ranks} ranks: pick a {degree} "
            f"dividing {heads}, or mode ring"
        )


def heads_to_sequence(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """[b, h, s/n, d] sequence shard → [b, h/n, s, d]: this rank's heads over the group's whole sequence."""
    return _AllToAll.apply(x, 1, 2, group)


def sequence_to_heads(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """The inverse of ``heads_to_sequence``: [b, h/n, s, d] → [b, h, s/n, d]."""
    return _AllToAll.apply(x, 2, 1, group)
