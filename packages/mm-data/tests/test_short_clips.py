"""MindSpeed-MM's short clips in the shared video loader: with ``drop_short_ratio`` below 1 a clip too short for
``num_frames`` is left out with that probability, else read with the most ``4k + 1`` frames it holds (at least
``min_num_frames``), never padded; its frame count is its bucket for batches grouped by frames."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mm_core.errors import DataError
from mm_data.datasets import VideoTextDataset
from mm_data.formats import DatasetParam, parse_data_config
from mm_data.sampler import bucket_keys


def _param(index: Path, entries: list[dict], **keys) -> DatasetParam:
    """A 17-frame dataset_param over ``entries`` (written to ``index``), with ``keys`` in preprocess_parameters."""
    index.write_text("".join(json.dumps({"cap": "a grey frame", **entry}) + "\n" for entry in entries))
    raw = {"dataset_param": {"basic_parameters": {"data_path": str(index)},
                             "preprocess_parameters": {"num_frames": 17, "max_height": 32, "max_width": 64, **keys}}}
    return parse_data_config(raw).dataset_param


def test_a_kept_short_clip_is_read_with_its_most_4k_plus_1_frames(make_counter_video, decoded_indices) -> None:
    video = make_counter_video(11)
    stated = {"path": video.name, "num_frames": 11, "fps": 24}
    kept = VideoTextDataset.from_param(_param(video.parent / "short.jsonl", [stated], drop_short_ratio=0.0,
                                              min_num_frames=5))
    frames = kept[0]["video"]
    assert frames.shape == (3, 9, 32, 64) and kept.shapes() == [(9, None, None)]
    first = decoded_indices(frames.permute(1, 2, 3, 0))[0]
    assert decoded_indices(frames.permute(1, 2, 3, 0)) == list(range(first, first + 9))
    unstated = _param(video.parent / "unstated.jsonl", [{"path": video.name}], drop_short_ratio=0.0)
    # MindSpeed-MM's min_num_frames default is 29, capped at num_frames here: 11 frames are too few for 17.
    with pytest.raises(DataError, match=r"counter-11-32x64-24.mp4 has 11 frames but 17 are needed for 17 frames$"):
        VideoTextDataset.from_param(unstated, on_bad_sample="error")[0]
    dropped = _param(video.parent / "dropped.jsonl", [{"path": video.name}], drop_short_ratio=0.999, min_num_frames=1)
    with pytest.raises(DataError, match=r"\(9 frames of num_frames 17\), left out by drop_short_ratio 0.999$"):
        VideoTextDataset.from_param(dropped, on_bad_sample="error")[0]


def test_drop_short_ratio_leaves_out_that_share_of_the_short_clips_the_index_states(tmp_path) -> None:
    entries = [{"path": f"clip{i}.mp4", "num_frames": 10 if i % 2 else 40, "fps": 24} for i in range(2000)]
    dataset = VideoTextDataset.from_param(_param(tmp_path / "many.jsonl", entries, drop_short_ratio=0.3,
                                                 min_num_frames=1), seed=7)
    shapes = dataset.shapes()
    assert shapes.count((17, None, None)) == 1000  # every long clip is kept
    assert 650 < shapes.count((9, None, None)) < 750  # about 70% of the 1000 short ones, as 9 frames
    again = VideoTextDataset.from_param(_param(tmp_path / "again.jsonl", entries, drop_short_ratio=0.3,
                                               min_num_frames=1), seed=7)
    assert [r.path for r in again.records] == [r.path for r in dataset.records]
    assert set(bucket_keys(shapes, group_frame=True, group_resolution=False)) == {(17, None, None), (9, None, None)}
    everything = _param(tmp_path / "all.jsonl", entries)  # drop_short_ratio 1: the index is read as it is
    assert len(VideoTextDataset.from_param(everything)) == 2000
