"""opensoraplan1_3 reads data.json's frame keys as the shared video loader does: ``auto_interval`` false makes
``frame_interval`` the stride (else train_fps sets it, and frame_interval is warned), ``skip_frame_num`` frames at
a clip's start are never read."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from opensoraplan_testing import osp_config

from mm_core.errors import DataError
from mm_data.synthetic import write_video
from mm_models_video.opensoraplan1_3.data import _warn_stride, build_dataset, parse_data

LEVEL0, LEVEL_STEP = 10, 12


@pytest.fixture(scope="module")
def counter(tmp_path_factory) -> list[str]:
    """A 20-frame 24 fps 32×64 clip whose frame i is grey level 10 + 12·i, and its annotation."""
    folder = tmp_path_factory.mktemp("counter")
    levels = LEVEL0 + LEVEL_STEP * torch.arange(20, dtype=torch.uint8)
    write_video(folder / "counter.mp4", levels.view(-1, 1, 1, 1).expand(20, 32, 64, 3).contiguous(), 24)
    entry = {"path": "counter.mp4", "cap": "a grey frame", "num_frames": 20, "fps": 24,
             "resolution": {"height": 32, "width": 64}}
    (folder / "annotation.json").write_text(json.dumps([entry]))
    return [f"data.dataset_param.data_path={folder / 'annotation.json'}", "data.dataset_param.num_frames=5",
            "data.dataset_param.max_height=32", "data.dataset_param.max_width=64", "model.flavor=tiny"]


def _frames(counter: list[str], *keys: str, seed: int = 0) -> list[int]:
    """The source index of each frame the dataset reads of the clip."""
    config = osp_config(*counter, *keys, f"training.seed={seed}")
    video = build_dataset(config, parse_data(config)).load(0)["video"]
    return [round((frame.float().mean().item() - LEVEL0) / LEVEL_STEP) for frame in video.unbind(1)]


def _strides(frames: list[int]) -> list[int]:
    return [b - a for a, b in zip(frames, frames[1:])]


def test_frame_interval_is_the_stride_when_auto_interval_is_false(counter) -> None:
    assert _strides(_frames(counter, "data.dataset_param.auto_interval=false",
                            "data.dataset_param.frame_interval=3")) == [3, 3, 3, 3]


def test_train_fps_sets_the_stride_under_auto_interval_and_frame_interval_is_warned(counter, caplog) -> None:
    _warn_stride.cache_clear()  # warned once per data section in a process: this test's must be the first
    with caplog.at_level(logging.WARNING, logger="mm"):
        frames = _frames(counter, "data.dataset_param.train_fps=12", "data.dataset_param.frame_interval=4")
    assert _strides(frames) == [2, 2, 2, 2]
    assert "auto_interval: train_fps sets the stride between frames): data.dataset_param.frame_interval" in caplog.text


def test_skip_frame_num_frames_are_never_read(counter) -> None:
    starts = {_frames(counter, "data.dataset_param.skip_frame_num=12", seed=seed)[0] for seed in range(6)}
    assert min(starts) >= 12 and len(starts) > 1
    assert _strides(_frames(counter, "data.dataset_param.skip_frame_num=12")) == [1, 1, 1, 1]


def test_a_clip_too_short_past_skip_frame_num_is_left_out(counter) -> None:
    config = osp_config(*counter, "data.dataset_param.skip_frame_num=17")
    with pytest.raises(DataError, match="none of the 1 annotated clips fits the data section"):
        build_dataset(config, parse_data(config))
