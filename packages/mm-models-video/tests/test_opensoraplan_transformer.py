"""The OpenSoraPlan 1.3 transformer: Skiparse equals dense attention under its mask, the release's names and config."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from opensoraplan_testing import skiparse_dense_bias

from mm_models_video.opensoraplan1_3.skiparse import MASKED_BIAS, skiparse_attention
from mm_models_video.opensoraplan1_3.transformer import OpenSoraT2V, sparse_layers

TINY = {
    "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 4, "num_layers": 6,
    "cross_attention_dim": 24, "caption_channels": 16, "sparse1d": True, "sparse_n": 2,
}


def _qkv(length: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, length, 3, 8, generator=g, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("grouped", [False, True], ids=["strided", "grouped"])
@pytest.mark.parametrize("length", [16, 23], ids=["whole", "padded"])
@pytest.mark.parametrize("masked", [False, True], ids=["all-kept", "video-mask"])
def test_skiparse_equals_dense_attention_with_its_mask(grouped, length, masked) -> None:
    """Forward and backward: the folded subsets (padding keys masked) are dense attention over a subset mask."""
    video_bias = None
    if masked:
        video_bias = torch.zeros(2, length)
        video_bias[1, length - 5:] = MASKED_BIAS
    q, k, v = _qkv(length)
    sparse = skiparse_attention(q, k, v, 4 if length == 16 else 2, grouped, video_bias)
    n = 4 if length == 16 else 2
    bias = skiparse_dense_bias(length, n, grouped, video_bias)
    dense = F.scaled_dot_product_attention(
        *(t.transpose(1, 2) for t in (q, k, v)), attn_mask=bias
    ).transpose(1, 2)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    weight = torch.randn_like(dense)
    sparse_grads = torch.autograd.grad((sparse * weight).sum(), (q, k, v))
    dense_grads = torch.autograd.grad((dense * weight).sum(), (q, k, v))
    for a, b in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sparse_layers_are_the_release_middle_ones() -> None:
    """32 layers: Skiparse on 2..29 (the release's ``1 < i < 30``), strided on even, grouped on odd layers."""
    layers = sparse_layers(32, True)
    assert [i for i, sparse in enumerate(layers) if sparse] == list(range(2, 30))
    assert not any(sparse_layers(32, False))
    model = OpenSoraT2V(**TINY)
    kinds = [(b.attn1.processor.sparse_n, b.attn1.processor.grouped) for b in model.transformer_blocks]
    assert kinds == [(1, False), (1, True), (2, False), (2, True), (1, False), (1, True)]


def test_state_dict_names_are_the_release_ones() -> None:
    model = OpenSoraT2V(**{**TINY, "num_layers": 1})
    block = {f"transformer_blocks.0.{a}.{p}.{w}" for a in ("attn1", "attn2")
             for p in ("to_q", "to_k", "to_v", "to_out.0") for w in ("weight", "bias")}
    block |= {f"transformer_blocks.0.ff.net.{p}.{w}" for p in ("0.proj", "2") for w in ("weight", "bias")}
    expected = block | {"transformer_blocks.0.scale_shift_table", "scale_shift_table"} | {
        f"{m}.{w}" for m in ("caption_projection.linear_1", "caption_projection.linear_2", "pos_embed.proj",
                             "proj_out", "adaln_single.linear", "adaln_single.emb.timestep_embedder.linear_1",
                             "adaln_single.emb.timestep_embedder.linear_2") for w in ("weight", "bias")
    }
    assert set(model.state_dict()) == expected


def test_loads_a_release_transformer_folder(tmp_path) -> None:
    """A folder with the release's config.json (its class name and extra keys) loads, and predicts the same."""
    torch.manual_seed(0)
    model = OpenSoraT2V(**TINY)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update({"_class_name": "OpenSoraT2V_v1_3", "sample_size_h": 44, "sample_size_w": 80,
                   "sample_size_t": 24, "only_cross_attention": False, "upcast_attention": False})
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = OpenSoraT2V.from_pretrained(tmp_path)
    latents, text = torch.randn(1, 4, 2, 4, 6), torch.randn(1, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    args = (latents, torch.tensor([500]), text, mask)
    torch.testing.assert_close(loaded(*args), model(*args), rtol=0, atol=0)
    assert loaded(*args).shape == latents.shape
