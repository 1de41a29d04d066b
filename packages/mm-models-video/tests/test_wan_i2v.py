"""wan2_1 image-to-video (model.task i2v): the composite against diffusers' transformer and pipeline, loading the
diffusers layout, the model.json keys."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from PIL import Image
from wan_testing import wan_config

from mm_core.errors import ConfigError
from mm_core.runtime import create_runtime
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.i2v import WanI2V
from mm_models_video.wan2_1.infer import generate

DIFFUSERS_TEXT = 512  # the text length diffusers' WanAttnProcessor assumes


def _i2v(*overrides: str) -> WanI2V:
    return build_model(wan_config("model.task=i2v", *overrides).model)


def _clip(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, 9, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _features(model: WanI2V, text_len: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z = model.ae.config.z_dim
    return {
        "latents": torch.randn(2, z, 3, 4, 4, generator=g),
        "prompt_embeds": torch.randn(2, text_len, model.text_encoder.config.d_model, generator=g),
        "image_embeds": torch.randn(2, model.image_tokens, model.image_encoder.config.hidden_size, generator=g),
        "condition": torch.randn(2, 4 + z, 3, 4, 4, generator=g),
        "noise": torch.randn(2, z, 3, 4, 4, generator=g),
        "timestep_indices": torch.tensor([3, 700]),
    }


def _diffusers_forward(predictor, model: WanI2V, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    noised, timesteps = model.diffusion.add_noise(inputs["latents"], inputs["noise"], inputs["timestep_indices"])
    hidden = torch.cat([noised, inputs["condition"]], dim=1)
    return predictor(hidden, timesteps, inputs["prompt_embeds"], inputs["image_embeds"], return_dict=False)[0]


class PaddedDiffusersCrossAttention:
    """diffusers' own WanAttnProcessor on a context whose text is padded to 512 tokens that the text attention masks
    out: attention to the padded text equals attention to the text alone, so this is diffusers at any text length."""

    def __init__(self, image_tokens: int) -> None:
        self.image_tokens, self.inner = image_tokens, WanAttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        text = encoder_hidden_states[:, self.image_tokens:]
        pad = text.new_zeros(text.shape[0], DIFFUSERS_TEXT - text.shape[1], text.shape[2])
        mask = torch.arange(DIFFUSERS_TEXT) < text.shape[1]
        context = torch.cat([encoder_hidden_states, pad], dim=1)
        return self.inner(attn, hidden_states, context, mask.view(1, 1, 1, -1), rotary_emb)


def test_prediction_equals_diffusers_transformer_with_512_text_tokens() -> None:
    model = _i2v(f"model.predictor.text_len={DIFFUSERS_TEXT}")
    inputs = _features(model, DIFFUSERS_TEXT)
    reference = copy.deepcopy(model.predictor)
    reference.set_attn_processor(WanAttnProcessor())
    with torch.no_grad():
        out = model(**inputs)
        expected = _diffusers_forward(reference, model, inputs)
    torch.testing.assert_close(out["pred"], expected, rtol=0, atol=0)
    torch.testing.assert_close(out["target"], inputs["noise"] - inputs["latents"], rtol=0, atol=0)


def test_prediction_equals_diffusers_with_short_text_where_its_split_would_break() -> None:
    model = _i2v()  # the tiny flavor's 64 text tokens
    inputs = _features(model, model.text_len)
    reference = copy.deepcopy(model.predictor)
    for block in reference.blocks:
        block.attn2.set_processor(PaddedDiffusersCrossAttention(model.image_tokens))
    with torch.no_grad():
        out = model(**inputs)["pred"]
        torch.testing.assert_close(out, _diffusers_forward(reference, model, inputs), rtol=1e-5, atol=1e-5)
        reference.set_attn_processor(WanAttnProcessor())  # diffusers' "all but the last 512 are the image's"
        wrong = _diffusers_forward(reference, model, inputs)
    assert (out - wrong).abs().max() > 1e-3


def test_conditions_equal_diffusers_image_to_video_pipeline() -> None:
    model = _i2v()
    frame = _clip(1)[0, :, 0]
    pipe = model.pipeline()
    image = Image.fromarray(frame.permute(1, 2, 0).numpy())
    torch.testing.assert_close(model.encode_image(frame[None]), pipe.encode_image(image, "cpu").float())
    pixels = pipe.video_processor.preprocess(image, height=32, width=32)
    _, expected = pipe.prepare_latents(pixels, 1, 4, 32, 32, 9, torch.float32, torch.device("cpu"))
    condition = model.condition_latents(frame[None], 9)
    assert condition.shape == (1, 4 + 4, 3, 4, 4)
    assert condition[:, :4, 0].eq(1).all() and condition[:, :4, 1:].eq(0).all()
    torch.testing.assert_close(condition, expected, rtol=1e-5, atol=1e-5)


def test_forward_from_the_video_trains_only_the_predictor() -> None:
    model = _i2v()
    out = model(video=_clip(), prompt=["a red circle", "a blue square"])
    assert out["pred"].shape == out["target"].shape == (2, 4, 3, 4, 4)
    ((out["pred"] - out["target"]) ** 2).mean().backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert model.predictor.blocks[0].attn2.add_k_proj.weight.grad is not None
    model.train()
    assert model.predictor.training and not model.image_encoder.training


def test_diffusers_layout_loads_every_part(tmp_path) -> None:
    model = _i2v()
    model.save_pretrained(tmp_path / "wan")
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "image_encoder", "image_processor"):
        assert (tmp_path / "wan" / part).is_dir(), part
    loaded = _i2v(f"model.from_pretrained={tmp_path / 'wan'}")
    assert set(loaded.external) == {"ae", "text_encoder", "image_encoder"}
    assert all(k.startswith("predictor.") for k in loaded.state_dict())
    inputs = {"video": _clip(), "prompt": ["a red circle", "a blue square"],
              "noise": torch.randn(2, 4, 3, 4, 4), "timestep_indices": torch.tensor([10, 500])}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs)["pred"], model(**inputs)["pred"], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="model.task is 't2v' but the transformer in .* is a Wan2.1 i2v model"):
        build_model(wan_config(f"model.from_pretrained={tmp_path / 'wan'}").model)
    # mm infer on the folder reads its task from transformer/config.json.
    Image.fromarray(_clip(1)[0, :, 0].permute(1, 2, 0).numpy()).save(tmp_path / "first.png")
    config = wan_config("training.device=cpu", f"inference.checkpoint={tmp_path / 'wan'}", "inference.steps=2",
                        "inference.num_frames=5", "inference.height=32", "inference.width=32",
                        f"inference.image={tmp_path / 'first.png'}", f"inference.output={tmp_path / 'out.mp4'}",
                        task="infer")
    assert generate(config, create_runtime(config)).startswith(f"wrote {tmp_path / 'out.mp4'}: 5 frames of 32x32")


def test_mindspeed_model_json_keys(tmp_path) -> None:
    model = _i2v("model.predictor.model_type=i2v", "model.predictor.in_dim=12", "model.predictor.img_dim=32",
                 "model.predictor.clip_token_len=17", "model.predictor.hidden_size=64")
    assert model.predictor.config.added_kv_proj_dim == 64 and model.predictor.config.image_dim == 32
    with pytest.raises(ConfigError, match="clip_token_len is 257 but the image encoder gives 17 tokens"):
        _i2v("model.predictor.clip_token_len=257")
    with pytest.raises(ConfigError, match="model.predictor.model_type 't2v' differs from model.task 'i2v'"):
        _i2v("model.predictor.model_type=t2v")
    with pytest.raises(ConfigError, match="model.task 'v2v' is not a Wan2.1 task"):
        build_model(wan_config("model.task=v2v").model)
    t2v = build_model(wan_config("model.predictor.img_dim=1280").model)  # MindSpeed-MM's T2V files carry img_dim
    assert t2v.predictor.config.image_dim is None


def test_flavors_of_both_tasks() -> None:
    from mm_models_video.wan2_1.flavors import get_flavor

    for name, inner, in_channels in (("1.3b", 1536, 36), ("14b", 5120, 36)):
        predictor = get_flavor(name).predictor_for("i2v")
        assert (predictor["in_channels"], predictor["image_dim"], predictor["added_kv_proj_dim"]) == (
            in_channels, 1280, inner)
        assert get_flavor(name).predictor_for("t2v")["in_channels"] == 16
    assert get_flavor("14b").clip_size("i2v") == (480, 832) and get_flavor("14b").clip_size("t2v") == (720, 1280)


def test_the_tiny_i2v_embedded_run_takes_shorter_clips_and_fewer_steps_unless_the_user_sets_them():
    from mm_core.plugins import load_plugins, make_config
    from mm_models_video.wan2_1.data import data_config
    from mm_models_video.wan2_1.plugin import settle

    config = make_config(load_plugins(["wan2_1"]), "run", [], None, ["model.task=i2v"])
    settle(config)
    assert (config.training.train_iters, config.training.save_interval) == (30, 30)
    assert data_config(config).dataset_param.num_frames == 9
    config = make_config(load_plugins(["wan2_1"]), "run", [], None, ["model.task=i2v", "training.train_iters=5"])
    settle(config)
    assert (config.training.train_iters, config.training.save_interval) == (5, 30)
    t2v = make_config(load_plugins(["wan2_1"]), "run", [], None, [])
    settle(t2v)
    assert t2v.training.train_iters == 60 and data_config(t2v).dataset_param.num_frames == 17
