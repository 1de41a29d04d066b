"""The data.json frame and resize keys of MindSpeed-MM's video processors, as the shared video loader honours them
(frame_interval, skip_frame_num, speed_factor, max_hxw ...), and the keys it names as not honoured."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mm_core.errors import ConfigError, DataError
from mm_data.clip_options import FEATURES, FIXED_SIZE, FPS_STRIDE, NO_PREPROCESSING, clip_options
from mm_data.datasets import VideoTextDataset, collate
from mm_data.formats import DatasetParam, parse_data_config, read_index
from mm_data.synthetic import make_moving_shapes


def _param(video: Path, entry: str = "", **keys) -> DatasetParam:
    """A dataset_param of one video (``entry``: more of its index entry), as a data.json with ``keys`` in its
    preprocess_parameters gives it."""
    (video.parent / "one.jsonl").write_text(f'{{"path": "{video.name}", "cap": "a grey frame"{entry}}}\n')
    raw = {"dataset_param": {"basic_parameters": {"data_path": str(video.parent / "one.jsonl")},
                             "preprocess_parameters": {"num_frames": 5, "max_height": 32, "max_width": 64, **keys}}}
    return parse_data_config(raw).dataset_param


def _frames(param: DatasetParam, decoded_indices) -> list[int]:
    return decoded_indices(VideoTextDataset.from_param(param, seed=3)[0]["video"].permute(1, 2, 3, 0))


def test_frame_interval_is_the_stride_between_frames(counter_video, decoded_indices) -> None:
    frames = _frames(_param(counter_video, frame_interval=2), decoded_indices)
    assert [b - a for a, b in zip(frames, frames[1:])] == [2, 2, 2, 2]
    # MindSpeed-MM's auto_interval (true by default) lets train_fps set the stride; false gives it back.
    fps_stride = clip_options(_param(counter_video, frame_interval=2, train_fps=12))
    assert fps_stride.sampling.interval is None and ("frame_interval", FPS_STRIDE) in fps_stride.unused
    frames = _frames(_param(counter_video, frame_interval=3, train_fps=12, auto_interval=False), decoded_indices)
    assert [b - a for a, b in zip(frames, frames[1:])] == [3, 3, 3, 3]


def test_skip_frame_num_frames_are_never_sampled_and_speed_factor_speeds_long_clips_up(
        counter_video, decoded_indices) -> None:
    param = _param(counter_video, skip_frame_num=12)
    starts = [decoded_indices(VideoTextDataset.from_param(param, seed=seed)[0]["video"].permute(1, 2, 3, 0))[0]
              for seed in range(6)]
    assert min(starts) >= 12 and len(set(starts)) > 1
    # 20 frames for 5: speed_factor 2 doubles the stride, 10 at most quadruples it (20 / 5 frames are there).
    doubled = _frames(_param(counter_video, speed_factor=2.0), decoded_indices)
    capped = _frames(_param(counter_video, speed_factor=10.0), decoded_indices)
    assert [b - a for a, b in zip(doubled, doubled[1:])] == [2, 2, 2, 2] and capped == [0, 4, 8, 12, 16]


def test_max_hxw_caps_each_clips_area_keeping_its_aspect(tmp_path) -> None:
    folder = make_moving_shapes(tmp_path, num_videos=1, num_frames=9, height=48, width=96)
    param = _param(read_index(folder / "data.json")[0].path, ', "num_frames": 9, "resolution": [48, 96]',
                   force_resolution=False, max_hxw=1200, hw_stride=8)
    dataset = VideoTextDataset.from_param(param)
    # 48×96 scaled to at most 1200 pixels keeps its 1:2 aspect (24×48 after rounding down to multiples of 8).
    assert dataset[0]["video"].shape == (3, 5, 24, 48) and dataset.shapes() == [(9, 24, 48)]
    tight = VideoTextDataset.from_param(dataclasses.replace(param, extra={**param.extra, "min_hxw": 2000}),
                                        on_bad_sample="error")
    with pytest.raises(DataError, match=r"a 48×96 clip does not fit max_hxw 1200 \(min_hxw 2000"):
        tight[0]


def test_keys_that_cannot_be_honoured_are_named_with_why(counter_video) -> None:
    options = clip_options(_param(counter_video, skip_define_frame_index=True, min_num_frames=1, drop_short_ratio=0.0,
                                  max_hxw=1200, video_reader_type="DecordVideo"))
    unused = dict(options.unused)
    assert unused["skip_define_frame_index"] == "MindSpeed-MM reads it nowhere"
    assert "min_num_frames" not in unused and "drop_short_ratio" not in unused  # honoured: test_short_clips.py
    assert unused["max_hxw"] == FIXED_SIZE and "video_reader_type" in unused
    # MindSpeed-MM drops captions only when it preprocesses them.
    unpreprocessed = clip_options(_param(counter_video, cfg=0.1, enable_text_preprocessing=False))
    assert dict(unpreprocessed.unused)["cfg"] == NO_PREPROCESSING and unpreprocessed.cfg == 0
    assert clip_options(_param(counter_video, drop_short_ratio=1.0, min_num_frames=5)).unused == ()
    features = clip_options(dataclasses.replace(_param(counter_video, max_hxw=1200), dataset_type="feature"))
    assert features.unused == (("max_hxw", FEATURES),)
    with pytest.raises(ConfigError, match=r"^data.dataset_param.frame_interval must be a number of at least 1, got 0$"):
        clip_options(_param(counter_video, frame_interval=0))
    with pytest.raises(ConfigError, match=r"^data.dataset_param.max_hxw is needed when force_resolution is false"):
        clip_options(_param(counter_video, force_resolution=False))


def test_clips_of_two_sizes_in_one_batch_are_one_error() -> None:
    small = {"video": torch.zeros(3, 5, 16, 32, dtype=torch.uint8), "prompt": "a", "index": 0}
    large = {"video": torch.zeros(3, 5, 24, 48, dtype=torch.uint8), "prompt": "b", "index": 1}
    with pytest.raises(DataError, match=r"^a batch's 'video' tensors differ in shape \(\(3, 5, 16, 32\), \(3, 5, 24, "
                                        r"48\)\): samples of several sizes .* grouped by size \(group_resolution"):
        collate([small, large])
