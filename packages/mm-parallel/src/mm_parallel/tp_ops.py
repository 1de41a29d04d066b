"""The autograd pieces of tensor parallelism: gradients summed over tp, the sequence split and gathered over tp,
an RMSNorm over features split across the ranks, and the vocabulary-parallel cross-entropy."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import loss_parallel

from mm_core.errors import ConfigError


class _SumGradOverRanks(torch.autograd.Function):
    """Identity forward; the backward sums the gradient over ``group`` (Megatron's copy-to-model-parallel region)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def sum_grad_over(x: torch.Tensor, group) -> torch.Tensor:
    """``x`` unchanged; its gradient is summed over ``group`` (a tensor every rank holds whole that meets shards)."""
    return _SumGradOverRanks.apply(x, group) if x.requires_grad else x


def split_sequence_tp(x: torch.Tensor, dim: int, mesh: DeviceMesh) -> torch.Tensor:
    """This tp rank's part of ``x`` along ``dim``; the backward gathers the gradient. The length must divide."""
    dim %= x.ndim
    if x.shape[dim] % mesh.size():
        raise ConfigError(
            f"parallel.tp.sequence_parallel: a sequence of {x.shape[dim]} (dim {dim} of a {tuple(x.shape)} tensor) "
            f"does not divide over parallel.tp.size {mesh.size()} ranks; pick sizes whose token count it divides "
            "or turn sequence_parallel off"
        )
    return DTensor.from_local(x, mesh, [Replicate()], run_check=False).redistribute(mesh, [Shard(dim)]).to_local()


def gather_sequence_tp(x: torch.Tensor, dim: int, mesh: DeviceMesh) -> torch.Tensor:
    """``x``'s parts from every tp rank joined along ``dim``; the backward keeps this rank's part of the gradient."""
    dim %= x.ndim
    return DTensor.from_local(x, mesh, [Shard(dim)], run_check=False).redistribute(mesh, [Replicate()]).to_local()


def sharded_rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, features: int, eps: float | None, group
) -> torch.Tensor:
    """RMSNorm of ``x``, whose last dim is this rank's part of ``features``: the squares are summed over ``group``."""
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    squares = dist_fn.all_reduce(x.float().pow(2).sum(-1, keepdim=True), group=group)
    out = (x.float() * torch.rsqrt(squares / features + eps)).type_as(x)
    return out if weight is None else out * weight


class _LossParallel(torch.autograd.Function):
    """Cross-entropy of vocabulary-split logits under torch's ``loss_parallel``, forward and backward alike.

    The trainer runs the backward outside any plugin code, so the backward re-enters ``loss_parallel`` here.
    """

    @staticmethod
    def forward(ctx, logits: DTensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
        with torch.enable_grad(), loss_parallel():
            leaf = logits.detach().requires_grad_()
            loss = F.cross_entropy(leaf, targets, reduction=reduction)
        ctx.leaf, ctx.loss = leaf, loss
        return loss.to_local().detach().clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[DTensor, None, None]:
        loss = ctx.loss
        grad = DTensor.from_local(grad.contiguous(), loss.device_mesh, loss.placements, run_check=False)
        with loss_parallel():
            (logits_grad,) = torch.autograd.grad(loss, ctx.leaf, grad)
        del ctx.leaf, ctx.loss
        return logits_grad, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``F.cross_entropy(logits, targets)``; logits split over the vocabulary (a ``vocab_parallel`` layer's DTensor)
    are never gathered. A plain tensor of the result, the same on every tp rank."""
    if not isinstance(logits, DTensor):
        return F.cross_entropy(logits, targets, reduction=reduction)
    return _LossParallel.apply(logits, targets, reduction)
