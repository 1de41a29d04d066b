"""``mm extract --plugin opensoraplan1_3``: the features hold what training on the clips draws in epoch 0 (the VAE
sample, the caption dropout, I2V's conditions), in mm's layout and MindSpeed-MM's, so the loss from them is the
online loss; training reads the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from opensoraplan_testing import osp_config, spawn_extraction

from mm_core.cli import main as mm
from mm_core.errors import ConfigError
from mm_core.runtime import create_runtime
from mm_core.testing import launch_script_flags
from mm_data.features import FeatureDataset
from mm_data.synthetic import make_moving_shapes
from mm_models_video.flow_matching import noise_seeds
from mm_models_video.opensoraplan1_3.data import build_train_loader
from mm_models_video.opensoraplan1_3.plugin import extract_features, loss_func, model_inputs, model_provider
from mm_models_video.synthetic import cache_dir

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "opensoraplan1_3" / "mindspeed-mm"
# Four 9-frame 32×48 clips; half the captions dropped (cfg), two blocks.
CLIP = ["training.device=cpu", "data.dataset_param.num_frames=9", "data.dataset_param.max_height=32",
        "data.dataset_param.max_width=48", "data.dataset_param.cfg=0.5", "model.flavor=tiny",
        "model.predictor.num_layers=2"]
BATCH = ["training.micro_batch_size=4", "training.global_batch_size=4"]


@pytest.fixture(scope="module")
def clips() -> list[str]:
    """Four generated clips (extraction encodes every one)."""
    folder = make_moving_shapes(cache_dir() / "datasets", num_videos=4, num_frames=17, height=32, width=48, fps=8)
    return [f"data.dataset_param.data_path={folder / 'data.json'}", f"data.dataset_param.data_folder={folder}"]


def _extract(out: Path, *overrides: str) -> str:
    config = osp_config(f"extract.output_dir={out}", *CLIP, *overrides, task="extract")
    runtime = create_runtime(config)
    try:
        return extract_features(config, runtime)
    finally:
        runtime.close()


@pytest.fixture(scope="module")
def t2v_store(tmp_path_factory, clips) -> Path:
    """The four clips extracted for T2V in mm's layout."""
    out = tmp_path_factory.mktemp("t2v") / "features"
    message = _extract(out, *clips)
    assert message.startswith(f"extracted 4 samples (0 skipped on rank 0) into {out}")
    assert f"mm run --plugin opensoraplan1_3 --data {out / 'data.json'}" in message
    return out


def _losses(store: Path, clips: list[str], task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first batch's loss from the store's data.json and from the clips, under fixed noise and timesteps."""
    options = [*CLIP, *BATCH, f"model.task={task}"]
    feature_config = osp_config(*options, sections={"data": store / "data.json"})
    video_config = osp_config(*options, *clips)
    runtime = create_runtime(video_config)
    features = next(iter(build_train_loader(feature_config, runtime)))
    videos = next(iter(build_train_loader(video_config, runtime)))
    # A store written by several ranks lists their shares in turn: its batch holds the same clips, in another order.
    order = [features["index"].tolist().index(i) for i in videos["index"].tolist()]
    features = {key: value[order] if isinstance(value, torch.Tensor) else [value[i] for i in order]
                for key, value in features.items()}
    assert features["index"].tolist() == videos["index"].tolist()
    torch.manual_seed(0)
    model = model_provider(video_config, runtime).train()
    seeds = noise_seeds(video_config.training.seed, videos["epoch"], videos["index"])
    fixed = {"noise": torch.randn(4, 8, 3, 4, 6), "timesteps": torch.tensor([100, 300, 600, 900]),
             "noise_seeds": seeds}
    with torch.no_grad():
        from_features = loss_func(model(**model_inputs(features), **fixed), features, runtime)[0]
        online = loss_func(model(**model_inputs(videos), **fixed), videos, runtime)[0]
    return from_features, online


def test_t2v_loss_from_features_equals_online_loss(t2v_store, clips) -> None:
    # The dropped captions are stored as the empty caption's states (its end token alone).
    store = FeatureDataset(t2v_store)
    lengths = {store[i]["index"]: len(store[i]["prompt_embeds"]) for i in range(len(store))}
    assert lengths == {0: 32, 1: 1, 2: 1, 3: 32}
    from_features, online = _losses(t2v_store, clips, "t2v")
    torch.testing.assert_close(from_features, online, rtol=1e-5, atol=0)


def test_i2v_mindspeed_layout_loss_from_features_equals_online_loss(tmp_path, clips) -> None:
    task = ["model.task=i2v", "data.dataset_param.mask_type_ratio_dict_video={'i2v': 1, 'random_temporal': 1}"]
    store = tmp_path / "features"
    _extract(store, *task, "extract.layout=mindspeed", *clips)
    sample = torch.load(next((store / "features").iterdir()), weights_only=True)
    assert sorted(sample) == ["input_mask", "masked_video", "prompt_ids", "prompt_mask", "video"]
    assert sample["masked_video"].shape == (8, 3, 4, 6) and sample["input_mask"].shape == (4, 3, 4, 6)
    from_features, online = _losses(store, clips, "i2v")
    torch.testing.assert_close(from_features, online, rtol=1e-5, atol=0)


def test_i2v_training_refuses_t2v_features(t2v_store) -> None:
    config = osp_config(*CLIP, *BATCH, "model.task=i2v", sections={"data": t2v_store / "data.json"})
    with pytest.raises(ConfigError, match="hold no I2V conditions .conditions, or MindSpeed-MM's masked_video and "
                       "input_mask., which model.task=i2v trains on"):
        build_train_loader(config, create_runtime(config))


def test_training_reads_features(tmp_path, t2v_store, mm_train) -> None:
    result = mm_train(["opensoraplan1_3"], *CLIP, "training.train_iters=2", "training.save_interval=0",
                      "training.micro_batch_size=2", "training.global_batch_size=2",
                      "data.dataset_param.dataset_type=feature",
                      f"data.dataset_param.data_path={t2v_store / 'data.jsonl'}", output_dir=tmp_path / "run")
    assert len(result.losses) == 2


def test_the_a3_extraction_script_with_its_files_is_a_valid_extract(tmp_path, capsys, restored_logging) -> None:
    folder = EXAMPLES / "t2v_A3"
    script = folder / "feature_extract" / "extract_feature.sh"
    assert "$(which mm) extract --plugin opensoraplan1_3" in script.read_text()
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps({"sorafeature": {"save_path": str(tmp_path / "sora_features")}}))
    flags = launch_script_flags(script, MM_MODEL=str(folder / "pretrain_t2v_model.json"),
                                MM_DATA=str(folder / "feature_extract" / "data.json"), MM_TOOL=str(tools), GBS="8")
    assert mm(["config", "--plugin", "opensoraplan1_3", *flags]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "error" not in err and "model.load_video_features" in err
    assert f"output_dir: {tmp_path / 'sora_features'}" in out and "cfg: 0.1" in out


@pytest.mark.slow
def test_two_ranks_extract_their_shares_into_one_store_that_trains_as_one_ranks(tmp_path, clips, t2v_store) -> None:
    spawn_extraction(2, f"extract.output_dir={tmp_path / 'features'}", *CLIP, *clips)
    two, one = FeatureDataset(tmp_path / "features"), FeatureDataset(t2v_store)
    assert sorted(entry["shard"].split("/")[0] for entry in two.entries) == ["rank_00000"] * 2 + ["rank_00001"] * 2
    by_index = {one[i]["index"]: one[i] for i in range(len(one))}
    for i in range(len(two)):
        item = two[i]
        for key in ("latents", "prompt_embeds"):
            assert torch.equal(item[key], by_index[item["index"]][key])
    # Each sample is seeded by its clip's index, wherever the store lists it.
    from_features, online = _losses(tmp_path / "features", clips, "t2v")
    torch.testing.assert_close(from_features, online, rtol=1e-5, atol=0)
