"""Ring attention's block kernels: a row split over key blocks, merged by log-sum-exp, equals SDPA both ways."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mm_core.testing import needs_cuda
from mm_parallel.block_attention import block_backward, block_forward, fused_kernel

SCALE = 0.3


def _split_row(q, k, v, grad, cut, diagonal_first, mask):
    """Attention of q over keys [:cut] and [cut:] as two blocks, merged; then each block's backward, summed."""
    blocks = [(slice(0, cut), mask, diagonal_first), (slice(cut, None), None, False)]
    outs, lses = [], []
    for cols, block_mask, diagonal in blocks:
        out, lse, _ = block_forward(q, k[..., cols, :], v[..., cols, :], block_mask, diagonal, SCALE)
        outs.append(out)
        lses.append(lse)
    lse = torch.logaddexp(*lses)
    out = sum(o * (partial - lse).exp().unsqueeze(-1) for o, partial in zip(outs, lses))
    delta = (grad * out).sum(-1)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for cols, block_mask, diagonal in blocks:
        bq, bk, bv = block_backward(
            q, k[..., cols, :], v[..., cols, :], block_mask, diagonal, SCALE, grad, out.to(q.dtype), lse, delta
        )
        dq += bq
        dk[..., cols, :] += bk
        dv[..., cols, :] += bv
    return out, dq, dk, dv


def _reference(q, k, v, grad, visible):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=SCALE)
    out.backward(grad)
    return out, q.grad, k.grad, v.grad


@pytest.mark.parametrize("block", ["full", "diagonal", "masked"])
def test_two_key_blocks_merge_to_sdpa(block):
    torch.manual_seed(0)
    q = torch.randn(2, 3, 6, 8)
    k, v = torch.randn(2, 3, 11, 8), torch.randn(2, 3, 11, 8)
    grad = torch.randn(2, 3, 6, 8)
    visible = torch.ones(6, 11, dtype=torch.bool)
    mask = None
    if block == "diagonal":  # the first key block is the queries' own chunk: query i sees keys 0..i
        visible[:, :6] = torch.ones(6, 6, dtype=torch.bool).tril()
    if block == "masked":  # padding keys in the first block
        mask = torch.ones(6, 6, dtype=torch.bool)
        mask[:, 4:] = False
        visible[:, :6] = mask
    got = _split_row(q, k, v, grad, 6, block == "diagonal", mask)
    expected = _reference(q, k, v, grad, visible)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_blocks_use_the_cpu_kernel_and_stay_close():
    torch.manual_seed(0)
    q, k, v, grad = (torch.randn(1, 2, 16, 8) for _ in range(4))
    assert fused_kernel(q.bfloat16(), None) == "cpu"
    got = _split_row(q.bfloat16(), k.bfloat16(), v.bfloat16(), grad.bfloat16(), 8, False, None)
    expected = _reference(q, k, v, grad, None)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        torch.testing.assert_close(a.float(), b, rtol=0.05, atol=0.05, msg=name)


def test_kernel_choice():
    cpu = torch.empty(1, 1, 2, 4)
    assert fused_kernel(cpu, None) == "cpu"
    assert fused_kernel(cpu, torch.ones(2, 2, dtype=torch.bool)) is None
    assert fused_kernel(torch.empty(1, 1, 2, 4, device="meta"), None) is None


@needs_cuda
@pytest.mark.parametrize("block", ["full", "diagonal"])
def test_cuda_flash_blocks_merge_to_sdpa_in_bf16(block):
    torch.manual_seed(0)
    q, grad = (torch.randn(2, 4, 64, 64, device="cuda") for _ in range(2))
    k, v = (torch.randn(2, 4, 128, 64, device="cuda") for _ in range(2))
    visible = torch.ones(64, 128, dtype=torch.bool, device="cuda")
    if block == "diagonal":
        visible[:, :64] = torch.ones(64, 64, dtype=torch.bool, device="cuda").tril()
    assert fused_kernel(q.bfloat16(), None) == "cuda"
    got = _split_row(*(t.bfloat16() for t in (q, k, v, grad)), 64, block == "diagonal", None)
    expected = _reference(q, k, v, grad, visible)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        torch.testing.assert_close(a.float(), b, rtol=3e-2, atol=3e-2, msg=name)
