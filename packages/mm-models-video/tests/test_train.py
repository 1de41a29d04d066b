"""Training through mm-core's loop: loss goes down, features equal online encoding, bad samples."""

from __future__ import annotations

import json

import pytest
import torch
from wan_testing import QUIET, SMALL_CLIPS, wan_config

from mm_core.data_iter import DataIterator
from mm_core.errors import DataError
from mm_core.runtime import create_runtime
from mm_data.synthetic import make_moving_shapes
from mm_models_video.synthetic import cache_dir
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.data import build_train_loader
from mm_models_video.wan2_1.extract import extract_features
from mm_models_video.wan2_1.plugin import forward_step, get_batch, loss_func

SHORT_RUN = [
    *SMALL_CLIPS,
    *QUIET,
    "training.micro_batch_size=2",
    "training.global_batch_size=2",
    "training.lr_warmup_iters=0",
]


def test_short_run_loss_decreases(mm_train, capsys) -> None:
    result = mm_train(["wan2_1"], *SHORT_RUN, "training.train_iters=12", "training.save_interval=12")
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert result.checkpoint is not None and (result.checkpoint / "config.yaml").is_file()
    printed = capsys.readouterr().out
    assert f"mm infer --plugin wan2_1 --checkpoint {result.checkpoint} --prompt" in printed


def _extract(tmp_path, *overrides: str):
    config = wan_config(f"extract.output_dir={tmp_path / 'features'}", *overrides, task="extract")
    runtime = create_runtime(config)
    message = extract_features(config, runtime)
    return config, runtime, message


def test_loss_from_features_equals_online_loss(tmp_path) -> None:
    config, runtime, message = _extract(tmp_path, "training.device=cpu")
    assert "extracted 16 samples" in message
    feature_config = wan_config(
        "training.device=cpu", "training.micro_batch_size=2", "training.global_batch_size=2",
        sections={"data": tmp_path / "features" / "data.json"},
    )
    video_config = wan_config("training.device=cpu", "training.micro_batch_size=2", "training.global_batch_size=2")
    features = next(iter(build_train_loader(feature_config, runtime)))
    videos = next(iter(build_train_loader(video_config, runtime)))
    assert features["index"].tolist() == videos["index"].tolist()
    model = build_model(config.model)
    fixed = {"noise": torch.randn(2, 4, 3, 4, 4), "timestep_indices": torch.tensor([100, 700])}
    with torch.no_grad():
        from_features = loss_func(model(features["latents"], features["prompt_embeds"], **fixed), features, runtime)[0]
        online = loss_func(model(video=videos["video"], prompt=videos["prompt"], **fixed), videos, runtime)[0]
    torch.testing.assert_close(from_features, online)


def test_noise_seeds_come_from_the_epoch_and_index_of_each_item() -> None:
    config = wan_config("training.device=cpu", "training.micro_batch_size=2", "training.global_batch_size=2")
    runtime = create_runtime(config)
    data = DataIterator(build_train_loader(config, runtime), seed=config.training.seed)
    data.load_state_dict({"epoch": 3, "position": 7})
    batch = get_batch(data, runtime, model=None)
    assert batch["epoch"].tolist() == [3, 3]
    stride = 1_000_003
    assert batch["noise_seeds"] == [(1234 * stride + 3) * stride + index for index in batch["index"].tolist()]


def test_training_reads_features(tmp_path, mm_train) -> None:
    _extract(tmp_path, "training.device=cpu")
    result = mm_train(
        ["wan2_1"], *SHORT_RUN, "training.train_iters=2", "training.save_interval=0",
        "data.dataset_param.dataset_type=feature",
        f"data.dataset_param.data_path={tmp_path / 'features' / 'data.jsonl'}",
    )
    assert len(result.losses) == 2


def _broken_dataset(tmp_path) -> str:
    folder = make_moving_shapes(cache_dir() / "datasets", num_videos=16, num_frames=9, height=32, width=32, fps=8)
    entries = json.loads((folder / "data.json").read_text())
    (tmp_path / "corrupt.mp4").write_bytes(b"not a video")
    entries[0]["path"] = str(folder / "videos" / "missing.mp4")
    entries[1]["path"] = str(tmp_path / "corrupt.mp4")
    entries[2]["cap"] = 42
    index = tmp_path / "data.json"
    index.write_text(json.dumps(entries))
    return f"data.dataset_param.data_path={index}", f"data.dataset_param.data_folder={folder}"


def test_bad_samples_are_skipped_and_counted(tmp_path) -> None:
    config = wan_config("training.device=cpu", "training.micro_batch_size=1", *_broken_dataset(tmp_path))
    loader = build_train_loader(config, create_runtime(config))
    item = loader.dataset[0, 0]
    assert isinstance(item["prompt"], str) and item["index"] == 3 and item["epoch"] == 0
    assert loader.dataset.dataset.bad_samples == 3


def test_bad_samples_fail_on_request(tmp_path) -> None:
    config = wan_config("training.device=cpu", "data.on_bad_sample=error", *_broken_dataset(tmp_path))
    loader = build_train_loader(config, create_runtime(config))
    with pytest.raises(DataError, match="missing.mp4"):
        loader.dataset[0, 0]
    with pytest.raises(DataError, match="caption 42 is not a string"):
        loader.dataset[0, 2]


def test_forward_step_passes_only_model_inputs(tiny_model) -> None:
    batch = {"video": torch.zeros(1, 3, 9, 32, 32), "prompt": ["x"], "index": torch.tensor([0])}
    assert forward_step(batch, tiny_model, None)["pred"].shape == (1, 4, 3, 4, 4)


def test_a_missing_video_index_names_its_key_and_file_before_the_model_is_built(tmp_path, capsys) -> None:
    from mm_core.cli import main

    data = tmp_path / "data.json"
    data.write_text(json.dumps({"dataset_param": {"basic_parameters": {"json_path": str(tmp_path / "nope.json")}}}))
    assert main(["run", "--plugin", "wan2_1", "--data", str(data), f"training.output_dir={tmp_path}"]) == 2
    out, err = capsys.readouterr()
    assert err == (f"error: video index {tmp_path / 'nope.json'} does not exist "
                   f"(data.dataset_param.basic_parameters.json_path, set in {data})\n")
    assert "parameters on" not in out  # no model was built or placed
