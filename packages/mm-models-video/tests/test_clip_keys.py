"""The frame and resize keys of MindSpeed-MM's data.json reach the video loader of every family that reads raw videos
(wan2_1, stepvideo, custom_dit): frame_interval strides the frames, max_hxw caps the area, and a key of no meaning
to mm is one warning line naming it."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from stepvideo_testing import stepvideo_config
from wan_testing import wan_config

from mm_core.plugins import load_plugins, make_config
from mm_data.synthetic import write_video
from mm_models_video.custom_dit.data import CustomT2VDataset
from mm_models_video.custom_dit.data import data_config as custom_data
from mm_models_video.stepvideo import data as stepvideo_data
from mm_models_video.wan2_1 import data as wan_data

LEVEL0, LEVEL_STEP = 4, 6  # frame i is grey at LEVEL0 + i * LEVEL_STEP: its brightness says which frame it is


@pytest.fixture(scope="module")
def counter(tmp_path_factory) -> list[str]:
    """A 40-frame 48×96 video whose frames' brightness counts them, as a one-entry data.json."""
    folder = tmp_path_factory.mktemp("counter")
    levels = LEVEL0 + LEVEL_STEP * torch.arange(40, dtype=torch.uint8)
    write_video(folder / "count.mp4", levels.view(-1, 1, 1, 1).expand(40, 48, 96, 3).contiguous(), 8)
    entry = {"path": "count.mp4", "cap": "a grey frame", "num_frames": 40, "fps": 8, "resolution": [48, 96]}
    (folder / "data.json").write_text(json.dumps([entry]))
    return [f"data.dataset_param.data_path={folder / 'data.json'}", f"data.dataset_param.data_folder={folder}"]


def _wan(*overrides):
    config = wan_config(*overrides)
    return wan_data.video_dataset(config, wan_data.data_config(config))


def _stepvideo(*overrides):
    config = stepvideo_config("data.dataset_param.num_frames=17", "data.dataset_param.max_height=32",
                              "data.dataset_param.max_width=64", *overrides)
    return stepvideo_data.video_dataset(config, stepvideo_data.data_config(config))


def _custom_dit(*overrides):
    config = make_config(load_plugins(["custom_dit"]), "run", [], None, list(overrides))
    return CustomT2VDataset.from_data_config(custom_data(config))


FAMILIES = {"wan2_1": _wan, "stepvideo": _stepvideo, "custom_dit": _custom_dit}


@pytest.mark.parametrize("family", FAMILIES)
def test_frame_interval_and_max_hxw_reach_the_familys_clips(family, counter) -> None:
    keys = ["data.dataset_param.frame_interval=2", "data.dataset_param.force_resolution=false",
            "data.dataset_param.max_hxw=1200", "data.dataset_param.hw_stride=8"]
    video = FAMILIES[family](*counter, *keys)[0]["video"]  # uint8 [3, T, H, W]
    frames = [round((frame.float().mean().item() - LEVEL0) / LEVEL_STEP) for frame in video.transpose(0, 1)]
    assert [b - a for a, b in zip(frames, frames[1:])] == [2] * (len(frames) - 1)
    assert video.shape[2:] == (24, 48)  # 48×96 scaled to at most 1200 pixels, its aspect kept, multiples of 8


def test_a_key_of_no_meaning_is_one_warning_line_naming_it(counter, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        _wan(*counter, "data.dataset_param.skip_define_frame_index=true", "data.dataset_param.max_hxw=4096")
    lines = [r.getMessage() for r in caplog.records if "skip_define_frame_index" in r.getMessage()]
    assert lines == ["warning: data section: accepted and ignored (MindSpeed-MM reads it nowhere): "
                     "data.dataset_param.skip_define_frame_index"]
    assert any(r.getMessage().endswith("(force_resolution is true: clips are resized and center-cropped to "
                                       "max_height × max_width): data.dataset_param.max_hxw") for r in caplog.records)
