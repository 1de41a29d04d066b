"""Wan2.1's transformer with selective recompute: the gradients of no recompute, attention run once."""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel

from mm_models_video.wan2_1.flavors import get_flavor
from mm_parallel.recompute import CountAttention, apply_recompute


def _step(mode: str | None) -> tuple[dict[str, torch.Tensor], int]:
    torch.manual_seed(0)
    predictor = WanTransformer3DModel(**get_flavor("tiny").predictor)
    if mode is not None:
        apply_recompute(predictor, ["blocks.{*}"], mode=mode)
    latents = torch.randn(1, 4, 3, 8, 8)
    text = torch.randn(1, 16, 64)
    with CountAttention() as counter:
        pred = predictor(hidden_states=latents, timestep=torch.tensor([500.0]), encoder_hidden_states=text,
                         return_dict=False)[0]
        pred.square().mean().backward()
    grads = {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in predictor.named_parameters()}
    return grads, counter.calls


def test_selective_recompute_of_wan_blocks_is_exact_and_keeps_attention():
    plain, plain_calls = _step(None)
    full, full_calls = _step("full")
    selective, selective_calls = _step("selective")
    blocks = get_flavor("tiny").predictor["num_layers"]
    assert plain_calls == 2 * blocks  # self- and cross-attention
    assert full_calls == 2 * plain_calls and selective_calls == plain_calls
    for name, grad in plain.items():
        torch.testing.assert_close(selective[name], grad, rtol=1e-6, atol=1e-7, msg=name)
        torch.testing.assert_close(full[name], grad, rtol=1e-6, atol=1e-7, msg=name)
