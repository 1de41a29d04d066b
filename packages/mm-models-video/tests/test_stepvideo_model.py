"""The stepvideo transformer is the release's: its state-dict names, fused per-head qkv, 3D RoPE split, adaLN-single
on a [0, 1] timestep scaled by 1000, CLIP tokens before the LLM's in cross-attention; TI2V's channel concat and
motion score; the 48-layer flavor's size."""

from __future__ import annotations

import math

import pytest
import torch

from mm_models_video.stepvideo.flavors import FLAVORS
from mm_models_video.stepvideo.transformer import StepVideoModel

# The release's names (those MindSpeed-MM's StepVideoConverter maps), per block and outside the blocks.
RELEASE_BLOCK = [
    "attn1.k_norm.weight", "attn1.q_norm.weight", "attn1.wo.weight", "attn1.wqkv.weight",
    "attn2.k_norm.weight", "attn2.q_norm.weight", "attn2.wkv.weight", "attn2.wo.weight", "attn2.wq.weight",
    "ff.net.0.proj.weight", "ff.net.2.weight", "norm1.bias", "norm1.weight", "norm2.bias", "norm2.weight",
    "scale_shift_table",
]
RELEASE_TOP = [
    "pos_embed.proj.bias", "pos_embed.proj.weight", "scale_shift_table",
    "adaln_single.emb.timestep_embedder.linear_1.bias", "adaln_single.emb.timestep_embedder.linear_1.weight",
    "adaln_single.emb.timestep_embedder.linear_2.bias", "adaln_single.emb.timestep_embedder.linear_2.weight",
    "adaln_single.linear.weight", "adaln_single.linear.bias",
    "caption_projection.linear_1.bias", "caption_projection.linear_1.weight",
    "caption_projection.linear_2.bias", "caption_projection.linear_2.weight",
    "clip_projection.bias", "clip_projection.weight", "proj_out.bias", "proj_out.weight",
]
MOTION = [f"adaln_single.emb.motion_score_embedder.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]


def _tiny(**extra) -> StepVideoModel:
    torch.manual_seed(0)
    return StepVideoModel(**{**FLAVORS["tiny"].predictor, **extra})


def _inputs(model: StepVideoModel, batch: int = 2, frames: int = 3, size: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    llm, clip = model.config.caption_channels
    mask = torch.ones(batch, 5 + 6, dtype=torch.long)
    mask[1, 5 + 3 :] = 0  # the second prompt has 3 of 6 LLM tokens
    return {
        "hidden_states": torch.randn(batch, frames, model.config.in_channels, size, size + 1, generator=g),
        "encoder_hidden_states": torch.randn(batch, 6, llm, generator=g),
        "encoder_hidden_states_2": torch.randn(batch, 5, clip, generator=g),
        "encoder_attention_mask": mask,
        "timestep": torch.tensor([0.25, 0.9]),
    }


def test_state_dict_names_are_the_releases() -> None:
    names = set(_tiny().state_dict())
    expected = {f"transformer_blocks.{i}.{n}" for i in range(2) for n in RELEASE_BLOCK} | set(RELEASE_TOP)
    assert names == expected
    assert set(_tiny(use_additional_conditions=True).state_dict()) == expected | set(MOTION)


def test_the_48_layer_flavor_is_step_video_30b() -> None:
    with torch.device("meta"):
        model = StepVideoModel(**FLAVORS["30b"].predictor)
    assert len(model.transformer_blocks) == 48 and model.inner_dim == 48 * 128
    assert model.rope.split == [64, 32, 32]
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(30.0, abs=1.5)


def _reference_self_attention(attn, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """The release's SelfAttention written out head by head (wqkv rows of head h: q, k, v; RoPE1D per axis)."""
    heads, d = attn.heads, attn.head_dim
    positions = torch.cartesian_prod(*(torch.arange(n) for n in grid))
    outs = []
    for h in range(heads):
        rows = attn.wqkv.weight[h * 3 * d : (h + 1) * 3 * d]
        q, k, v = (x @ rows[i * d : (i + 1) * d].T for i in range(3))
        q, k = attn.q_norm(q), attn.k_norm(k)
        rotated = []
        for t in (q, k):
            parts, start = [], 0
            for axis, width in enumerate(attn.rope_split):
                seg = t[..., start : start + width]
                inv = 1.0 / (1e4 ** (torch.arange(0, width, 2).float() / width))
                freqs = positions[:, axis, None].float() * inv
                freqs = torch.cat([freqs, freqs], -1)
                half = torch.cat([-seg[..., width // 2 :], seg[..., : width // 2]], -1)
                parts.append(seg * freqs.cos() + half * freqs.sin())
                start += width
            rotated.append(torch.cat(parts, -1))
        weights = torch.softmax(rotated[0] @ rotated[1].transpose(-1, -2) / math.sqrt(d), -1)
        outs.append(weights @ v)
    return torch.cat(outs, -1) @ attn.wo.weight.T


def test_self_attention_is_the_releases_per_head_layout_and_rope() -> None:
    model = _tiny()
    grid = (3, 2, 3)
    x = torch.randn(2, math.prod(grid), model.inner_dim)
    cos, sin = model.rope(grid, x.device)
    out = model.transformer_blocks[0].attn1(x, cos, sin)
    torch.testing.assert_close(out, _reference_self_attention(model.transformer_blocks[0].attn1, x, grid))


def test_forward_is_embed_blocks_unembed_and_reads_only_unmasked_text() -> None:
    model = _tiny()
    inputs = _inputs(model)
    out = model(**inputs, return_dict=False)
    assert out.shape == inputs["hidden_states"].shape  # frames before channels in and out
    changed = {**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"].clone()}
    changed["encoder_hidden_states"][1, 3:] += 5.0  # masked LLM tokens of the second prompt
    torch.testing.assert_close(model(**changed, return_dict=False), out)
    changed["encoder_hidden_states_2"] = inputs["encoder_hidden_states_2"] + 1.0  # CLIP tokens are read
    assert not torch.allclose(model(**changed, return_dict=False)[0], out[0])


def test_timestep_is_a_fraction_scaled_by_1000_inside() -> None:
    """adaLN-single embeds 1000 t, the scale the release's sampler relies on (it passes t in [0, 1])."""
    model = _tiny()
    modulation, embedded = model.adaln_single(torch.tensor([0.25]))
    proj = model.adaln_single.emb.time_proj(torch.tensor([250.0]))
    torch.testing.assert_close(embedded, model.adaln_single.emb.timestep_embedder(proj))
    torch.testing.assert_close(modulation, model.adaln_single.linear(torch.nn.functional.silu(embedded)))


def test_ti2v_concatenates_the_image_condition_and_embeds_the_motion_score() -> None:
    model = _tiny(use_additional_conditions=True)
    assert model.pos_embed.proj.in_channels == 2 * model.config.in_channels
    inputs = _inputs(model)
    condition = torch.randn_like(inputs["hidden_states"])
    out = model(**inputs, condition_hidden_states=condition, motion_score=5.0, return_dict=False)
    other = model(**inputs, condition_hidden_states=condition, motion_score=10.0, return_dict=False)
    assert out.shape == inputs["hidden_states"].shape and not torch.allclose(out, other)

