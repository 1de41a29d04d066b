"""One block of ring attention, forward (with its log-sum-exp) and backward, on fused kernels where there are some.

Ring attention splits one softmax over several key blocks. Each block's forward returns its output and
log-sum-exp, which the ring merges; each block's backward takes the *whole row's* output and log-sum-exp,
from which flash attention's backward rebuilds the row's softmax exactly. Flash kernels do both: on the CPU
(``_scaled_dot_product_flash_attention_for_cpu``, any float dtype) and on CUDA in fp16 / bf16
(``_scaled_dot_product_flash_attention``). Blocks with an arbitrary mask (padding keys), and devices or
dtypes without such a kernel, use explicit float32 matmuls.
"""

from __future__ import annotations

from typing import Any

import torch

aten = torch.ops.aten
FLASH_CUDA_DTYPES = (torch.float16, torch.bfloat16)


def fused_kernel(q: torch.Tensor, mask: torch.Tensor | None) -> str | None:
    """``"cpu"`` or ``"cuda"``: the flash kernel a block of ``q`` runs on, or None for explicit matmuls."""
    if mask is not None:
        return None
    if q.device.type == "cpu":
        return "cpu"
    if q.device.type == "cuda" and q.dtype in FLASH_CUDA_DTYPES:
        return "cuda"
    return None


def _scores(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float) -> torch.Tensor:
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if causal:
        mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
    return s if mask is None else s.masked_fill(~mask.to(s.device), float("-inf"))


def block_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(output in float32, log-sum-exp [b, h, s] in float32, what the kernel's backward needs besides) of one block.

    ``causal``: the block is on the diagonal (query i sees keys up to i); ``mask``: any other pattern. The third
    item is None except for the CUDA kernel: its sequence-length and RNG outputs, which its backward takes back,
    as torch's own ring attention passes them.
    """
    kernel = fused_kernel(q, mask)
    if kernel == "cpu":
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out.float(), lse, None
    if kernel == "cuda":
        out, lse, cum_q, cum_k, _, _, seed, offset, _ = aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, causal, False, scale=scale
        )
        return out.float(), lse, (cum_q, cum_k, seed, offset)
    s = _scores(q, k, mask, causal, scale)
    lse = s.logsumexp(-1)
    return torch.matmul((s - lse.unsqueeze(-1)).exp(), v.float()), lse, None


def block_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    grad: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    aux: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float32 gradients of ``q``, ``k``, ``v`` for one block, given the whole row's ``out``, ``lse`` and ``grad``.

    ``delta`` is the row sums of ``grad * out`` (the explicit path uses it; the kernels compute their own);
    ``aux`` is the third item of a :func:`block_forward` on the same device.
    """
    kernel = fused_kernel(q, mask)
    if kernel is not None:
        grad, out, lse = grad.to(q.dtype).contiguous(), out.contiguous(), lse.contiguous()
    if kernel == "cpu":
        grads = aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad, q, k, v, out, lse, 0.0, causal, scale=scale
        )
        return tuple(g.float() for g in grads)
    if kernel == "cuda":
        cum_q, cum_k, seed, offset = aux
        grads = aten._scaled_dot_product_flash_attention_backward(
            grad, q, k, v, out, lse, cum_q, cum_k, q.shape[-2], k.shape[-2], 0.0, causal, seed, offset, scale=scale
        )
        return tuple(g.float() for g in grads)
    # The softmax of the whole row is rebuilt from the saved global lse, as in flash attention's backward.
    p = (_scores(q, k, mask, causal, scale) - lse.unsqueeze(-1)).exp()
    ds = p * (torch.matmul(grad.float(), v.float().transpose(-1, -2)) - delta.unsqueeze(-1))
    dq = torch.matmul(ds, k.float()) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q.float()) * scale
    return dq, dk, torch.matmul(p.transpose(-1, -2), grad.float())
