"""The tiny WanT2V: build, shapes, frozen parts, diffusion, diffusers round trip."""

from __future__ import annotations

import time

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from wan_testing import wan_config

from mm_core.errors import ConfigError
from mm_models_video.flow_matching import FlowMatching
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.plugin import loss_func


def _clip(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 9, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_tiny_builds_fast_and_small() -> None:
    start = time.perf_counter()
    model = build_model(wan_config().model)
    assert time.perf_counter() - start < 1.0
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 300_000 < total < 2_000_000
    assert trained == sum(p.numel() for p in model.predictor.parameters())


def test_forward_shapes_and_loss(tiny_model) -> None:
    out = tiny_model(video=_clip(), prompt=["a red circle", "a blue square moving left"])
    assert out["pred"].shape == out["target"].shape == (2, 4, 3, 4, 4)
    assert out["tokens"] == 2 * 3 * 2 * 2  # batch × latent frames × (4 × 4 latent pixels / 2 × 2 patches)
    loss, metrics = loss_func(out, {}, None)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert metrics["tokens"] == 24.0
    loss.backward()
    assert all(p.grad is None for p in tiny_model.ae.parameters())
    assert tiny_model.predictor.proj_out.weight.grad is not None


def test_frozen_parts_stay_in_eval(tiny_model) -> None:
    tiny_model.train()
    assert tiny_model.predictor.training
    assert not tiny_model.ae.training and not tiny_model.text_encoder.training


def test_text_embeddings_are_zero_past_the_prompt(tiny_model) -> None:
    embeds = tiny_model.encode_text(["hi"])
    length = int(tiny_model.tokenize(["hi"])[1].sum())
    assert embeds.shape == (1, tiny_model.text_len, 64)
    assert embeds[0, length:].abs().sum() == 0 and embeds[0, :length].abs().sum() > 0


def test_flow_matching_matches_diffusers_and_wan() -> None:
    fm = FlowMatching(1000, 5.0)
    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    torch.testing.assert_close(fm.sigmas, reference.sigmas)
    x0, noise = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    indices = torch.tensor([0, 999])
    noised, timesteps = fm.add_noise(x0, noise, indices)
    sigma = fm.sigmas[indices].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(noised, (1 - sigma) * x0 + sigma * noise)
    torch.testing.assert_close(timesteps, fm.sigmas[indices] * 1000)
    torch.testing.assert_close(fm.target(x0, noise), noise - x0)


def test_diffusers_layout_round_trip(tiny_model, tmp_path) -> None:
    tiny_model.save_pretrained(tmp_path / "wan")
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tmp_path / "wan" / part).is_dir()
    loaded = build_model(wan_config(f"model.from_pretrained={tmp_path / 'wan'}").model)
    assert set(loaded.external) == {"ae", "text_encoder"}
    assert all(k.startswith("predictor.") for k in loaded.state_dict())
    inputs = {
        "video": _clip(),
        "prompt": ["a red circle", "a blue square"],
        "noise": torch.randn(2, 4, 3, 4, 4),
        "timestep_indices": torch.tensor([10, 500]),
    }
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs)["pred"], tiny_model(**inputs)["pred"], rtol=0, atol=0)


def test_predictor_keys_must_match_pretrained(tiny_model, tmp_path) -> None:
    tiny_model.save_pretrained(tmp_path / "wan")
    with pytest.raises(ConfigError, match="hidden_size"):
        build_model(wan_config(f"model.from_pretrained={tmp_path / 'wan'}", "model.predictor.hidden_size=256").model)


def test_seed_predictor_keys_build_the_transformer() -> None:
    model = build_model(wan_config("model.predictor.hidden_size=64", "model.predictor.num_layers=1").model)
    assert model.predictor.config.attention_head_dim == 16
    assert len(model.predictor.blocks) == 1


def test_attention_processor_can_be_swapped(tiny_model) -> None:
    class Recording:
        def __init__(self, inner) -> None:
            self.inner, self.calls = inner, 0

        def __call__(self, *args, **kwargs):
            self.calls += 1
            return self.inner(*args, **kwargs)

    processor = Recording(tiny_model.predictor.blocks[0].attn1.processor)
    tiny_model.set_attention_processor(processor)
    tiny_model(video=_clip(1), prompt=["x"])
    assert processor.calls == 2 * len(tiny_model.predictor.blocks)
