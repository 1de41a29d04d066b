"""Cut a sequence into this rank's context-parallel shard and put the shards back together."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from mm_core.errors import PluginError
from mm_parallel.context import ContextParallel, active_scope, record_split, true_length


def _groups(cp: ContextParallel | None) -> ContextParallel | None:
    """``cp``, else the active scope's; None when there is no context parallelism to apply."""
    scope = active_scope()
    cp = cp if cp is not None else scope.cp if scope is not None else None
    return cp if cp is not None and cp.size > 1 else None


def split_sequence(x: torch.Tensor, dim: int, cp: ContextParallel | None = None) -> torch.Tensor:
    """This rank's shard of ``x`` along ``dim``, zero-padded to the layout's length; the active scope notes the length.

    ``cp``: default the active scope's. Without context parallelism (none, or one rank) ``x`` is returned as it is.
    """
    cp = _groups(cp)
    if cp is None:
        return x
    length = x.shape[dim]
    layout = cp.layout(length)
    record_split(cp, length)
    if layout.padded > length:
        shape = list(x.shape)
        shape[dim] = layout.padded - length
        x = torch.cat([x, x.new_zeros(shape)], dim)
    return x.index_select(dim, layout.positions(cp.rank).to(x.device))


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's tensor along ``dim``; backward sums the gradients and returns each rank its part."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, group: ProcessGroup) -> torch.Tensor:
        ctx.dim, ctx.group = dim, group
        shards = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(shards, x.contiguous(), group=group)
        return torch.cat(shards, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        parts = [part.contiguous() for part in grad.chunk(dist.get_world_size(ctx.group), ctx.dim)]
        out = torch.empty_like(parts[0])
        dist.reduce_scatter(out, parts, group=ctx.group)
        return out, None, None


def gather_sequence(
    x: torch.Tensor, dim: int, cp: ContextParallel | None = None, length: int | None = None
) -> torch.Tensor:
    """The whole sequence from every rank's shard of ``x``, padding dropped.

    ``cp``: default the active scope's; ``length``: the true length, default the active scope's split (none: no
    padding). Without context parallelism ``x`` is returned as it is.
    """
    scope = active_scope()
    if cp is None and length is None and scope is not None and scope.cp.size > 1 and scope.length is None:
        raise PluginError(
            f"gather_sequence under context parallelism (parallel.cp.size {scope.cp.size}) but nothing was split in "
            "this forward: split the sequence first, with mm_parallel.split_sequence in the forward or split_inputs / "
            "split_outputs in the plugin's ContextParallelPlan"
        )
    cp = _groups(cp)
    if cp is None:
        return x
    layout = cp.layout(true_length(cp, length, x.shape[dim]))
    full = _AllGather.apply(x, dim, cp.group)
    return full.index_select(dim, layout.order.argsort().to(x.device)).narrow(dim, 0, layout.length)
