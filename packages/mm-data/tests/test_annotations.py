"""Open-Sora-Plan's data.txt and annotation.json: roots, captions, resolution, fps, frames, aesthetic score."""

from __future__ import annotations

import json

import pytest

from mm_core.errors import DataError
from mm_data.annotations import read_annotations


def test_data_txt_lists_roots_and_annotation_files(tmp_path) -> None:
    entries = [
        {"path": "folder_01/video0.mp4", "cap": ["a dog runs", "a dog"], "resolution": {"height": 720, "width": 1280},
         "fps": 30.0, "num_frames": 120, "aes": 5.9, "cut": [12, 132], "extra": "ignored"},
        {"path": "folder_02/video1.mp4", "cap": "waves"},
    ]
    (tmp_path / "v1.1.0_HQ_part3.json").write_text(json.dumps(entries))
    (tmp_path / "data.txt").write_text(f"/data/pixabay_v2,{tmp_path / 'v1.1.0_HQ_part3.json'}\n\n")
    first, second = read_annotations(tmp_path / "data.txt")
    assert str(first.path) == "/data/pixabay_v2/folder_01/video0.mp4" and first.caption == "a dog runs"
    assert (first.height, first.width, first.fps, first.num_frames, first.aes, first.start_frame) == (
        720, 1280, 30.0, 120, 5.9, 12)
    assert second.caption == "waves" and second.num_frames is None and second.aes is None
    alone = read_annotations(tmp_path / "v1.1.0_HQ_part3.json", "/videos")
    assert str(alone[1].path) == "/videos/folder_02/video1.mp4"


@pytest.mark.parametrize(
    ("content", "message"),
    [("/data", "expected 'root,annotation.json'"), ("/data,{missing}", "missing.json does not exist")],
)
def test_bad_data_txt_is_one_clear_error(tmp_path, content, message) -> None:
    (tmp_path / "data.txt").write_text(content.format(missing=tmp_path / "missing.json"))
    with pytest.raises(DataError, match=message):
        read_annotations(tmp_path / "data.txt")


def test_entry_without_path_names_where(tmp_path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([{"cap": "x"}]))
    with pytest.raises(DataError, match=r"a.json entry 0: expected an object with 'path'"):
        read_annotations(tmp_path / "a.json")
