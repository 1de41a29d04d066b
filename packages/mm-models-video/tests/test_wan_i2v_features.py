"""wan2_1 I2V feature extraction: the shards hold the first frame's CLIP tokens and conditioning latents, and the
loss from them equals the online loss for the same sample, timestep and noise."""

from __future__ import annotations

import json

import pytest
import torch
from wan_testing import wan_config

from mm_core.errors import ConfigError
from mm_core.runtime import create_runtime
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.data import build_train_loader
from mm_models_video.wan2_1.extract import extract_features
from mm_models_video.wan2_1.plugin import loss_func, model_inputs

BATCH = ["training.device=cpu", "training.micro_batch_size=2", "training.global_batch_size=2"]


@pytest.mark.slow
def test_loss_from_i2v_features_equals_online_loss(tmp_path) -> None:
    config = wan_config("model.task=i2v", f"extract.output_dir={tmp_path / 'features'}", "training.device=cpu",
                        task="extract")
    runtime = create_runtime(config)
    assert "extracted 16 samples" in extract_features(config, runtime)
    data = tmp_path / "features" / "data.json"
    features = next(iter(build_train_loader(wan_config("model.task=i2v", *BATCH, sections={"data": data}), runtime)))
    videos = next(iter(build_train_loader(wan_config("model.task=i2v", *BATCH), runtime)))
    assert features["index"].tolist() == videos["index"].tolist()
    assert features["image_embeds"].shape == (2, 17, 32) and features["condition"].shape == (2, 8, 3, 4, 4)
    model = build_model(config.model)
    fixed = {"noise": torch.randn(2, 4, 3, 4, 4), "timestep_indices": torch.tensor([100, 700])}
    with torch.no_grad():
        from_features = loss_func(model(**model_inputs(features), **fixed), features, runtime)[0]
        online = loss_func(model(**model_inputs(videos), **fixed), videos, runtime)[0]
    torch.testing.assert_close(from_features, online)


def test_an_i2v_run_on_t2v_features_is_one_error(tmp_path) -> None:
    index = tmp_path / "data.jsonl"
    index.write_text(json.dumps({"sample": 0, "shard": "rank_00000/shard_00000.safetensors",
                                 "keys": ["latents", "prompt_embeds"], "meta": {"prompt": "x"}}) + "\n")
    config = wan_config("model.task=i2v", *BATCH, "data.dataset_param.dataset_type=feature",
                        f"data.dataset_param.data_path={index}")
    with pytest.raises(ConfigError, match="hold no image_embeds, condition, which model.task=i2v trains on "
                                          r"\(extract them with model.task=i2v\)"):
        build_train_loader(config, create_runtime(config))


def test_mindspeed_mm_i2v_feature_names_feed_the_composite() -> None:
    clip, condition = torch.zeros(1, 17, 32), torch.zeros(1, 8, 3, 4, 4)
    inputs = model_inputs({"latents": torch.zeros(1), "i2v_clip_feature": clip, "i2v_vae_feature": condition})
    assert inputs["image_embeds"] is clip and inputs["condition"] is condition and "i2v_clip_feature" not in inputs
