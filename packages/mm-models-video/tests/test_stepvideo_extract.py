"""``mm extract --plugin stepvideo``: the features hold what training on the videos computes (latents, both text
features, TI2V's first-frame condition), training from them gives the same loss, and a store missing a part is
one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from stepvideo_testing import spawn_extraction, stepvideo_config

from mm_core.errors import ConfigError
from mm_core.runtime import create_runtime
from mm_data.features import FeatureDataset
from mm_data.synthetic import make_moving_shapes
from mm_models_video.flow_matching import noise_seeds
from mm_models_video.stepvideo.build import build_model
from mm_models_video.stepvideo.data import build_train_loader
from mm_models_video.stepvideo.extract import extract_features
from mm_models_video.stepvideo.plugin import loss_func, model_inputs
from mm_models_video.synthetic import cache_dir

BATCH = ["training.device=cpu", "training.micro_batch_size=2", "training.global_batch_size=2"]


@pytest.fixture(scope="module")
def clips() -> list[str]:
    """Four generated clips (extraction encodes every one)."""
    folder = make_moving_shapes(cache_dir() / "datasets", num_videos=4, num_frames=17, height=32, width=32, fps=8)
    return [f"data.dataset_param.data_path={folder / 'data.json'}", f"data.dataset_param.data_folder={folder}"]


@pytest.fixture(scope="module")
def t2v_features(tmp_path_factory, clips) -> Path:
    """The four clips extracted for T2V."""
    out = tmp_path_factory.mktemp("t2v")
    _extract(out, *clips)
    return out


def _extract(tmp_path, *overrides: str) -> str:
    config = stepvideo_config(f"extract.output_dir={tmp_path / 'features'}", "training.device=cpu", *overrides,
                              task="extract")
    runtime = create_runtime(config)
    try:
        return extract_features(config, runtime)
    finally:
        runtime.close()


def _features(tmp_path) -> dict:
    return {"data": tmp_path / "features" / "data.json"}


@pytest.mark.parametrize(("task", "sampled"), [("t2v", False), ("i2v", False), ("t2v", True)])
def test_loss_from_features_equals_online_loss(tmp_path, clips, t2v_features, task, sampled) -> None:
    # A sampled VAE posterior is drawn from the clip's seed at extraction as in training.
    options = [f"model.task={task}", f"model.ae.do_sample={str(sampled).lower()}"]
    if task == "i2v" or sampled:
        message = _extract(tmp_path, *options, *clips)
        assert message.startswith(f"extracted 4 samples (0 skipped on rank 0) into {tmp_path / 'features'}")
        assert f"mm run --plugin stepvideo --data {tmp_path / 'features' / 'data.json'}" in message
    features_at = tmp_path if task == "i2v" or sampled else t2v_features
    feature_config = stepvideo_config(*BATCH, *options, sections=_features(features_at))
    video_config = stepvideo_config(*BATCH, *options, *clips)
    runtime = create_runtime(video_config)
    features = next(iter(build_train_loader(feature_config, runtime)))
    videos = next(iter(build_train_loader(video_config, runtime)))
    assert features["index"].tolist() == videos["index"].tolist()
    assert ("image_latents" in features) == (task == "i2v")
    model = build_model(video_config.model)
    seeds = noise_seeds(video_config.training.seed, videos["epoch"], videos["index"])
    fixed = {"noise": torch.randn(2, 3, 4, 2, 2), "timestep_indices": torch.tensor([100, 700]), "noise_seeds": seeds}
    with torch.no_grad():
        from_features = loss_func(model(**model_inputs(features), **fixed), features, runtime)[0]
        online = loss_func(model(**model_inputs(videos), **fixed), videos, runtime)[0]
    torch.testing.assert_close(from_features, online, rtol=1e-6, atol=0)


def test_ti2v_training_refuses_t2v_features(t2v_features) -> None:
    config = stepvideo_config(*BATCH, "model.task=i2v", sections=_features(t2v_features))
    with pytest.raises(ConfigError, match="hold no image_latents, which model.task=i2v trains on .extract with "
                       "model.task=i2v."):
        build_train_loader(config, create_runtime(config))


def test_training_reads_features(tmp_path, t2v_features, mm_train) -> None:
    result = mm_train(["stepvideo"], "training.train_iters=2", "training.save_interval=0",
                      "training.micro_batch_size=2", "training.global_batch_size=2",
                      "data.dataset_param.dataset_type=feature",
                      f"data.dataset_param.data_path={t2v_features / 'features' / 'data.jsonl'}",
                      output_dir=tmp_path / "run")
    assert len(result.losses) == 2


@pytest.mark.slow
def test_two_ranks_extract_their_shares_into_one_store(tmp_path, clips, t2v_features) -> None:
    spawn_extraction(2, f"extract.output_dir={tmp_path / 'features'}", *clips)
    two, one = FeatureDataset(tmp_path / "features"), FeatureDataset(t2v_features / "features")
    assert sorted(entry["shard"].split("/")[0] for entry in two.entries) == ["rank_00000"] * 2 + ["rank_00001"] * 2
    by_index = {one[i]["index"]: one[i] for i in range(len(one))}
    assert sorted(by_index) == sorted(two[i]["index"] for i in range(len(two))) == [0, 1, 2, 3]
    for i in range(len(two)):
        item = two[i]
        for key in ("latents", "prompt_embeds", "clip_embeds"):
            assert torch.equal(item[key], by_index[item["index"]][key])
