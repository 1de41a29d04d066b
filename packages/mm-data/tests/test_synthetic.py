from __future__ import annotations

import json
import time
from pathlib import Path

from mm_data.formats import read_index
from mm_data.synthetic import make_moving_shapes
from mm_data.video import read_video


def test_moving_shapes_are_cached_by_parameters(tmp_path: Path) -> None:
    start = time.perf_counter()
    folder = make_moving_shapes(tmp_path, num_videos=8)
    assert time.perf_counter() - start < 5
    entries = json.loads((folder / "data.json").read_text())
    assert len(entries) == 8
    assert entries[0]["resolution"] == {"height": 64, "width": 64} and entries[0]["num_frames"] == 17
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert make_moving_shapes(tmp_path, num_videos=8) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamps
    other = make_moving_shapes(tmp_path, num_videos=2, seed=1)
    assert other != folder and len(read_index(other / "data.json")) == 2


def test_captions_describe_the_videos(shapes_dir: Path) -> None:
    records = read_index(shapes_dir / "data.json")
    assert len({r.caption for r in records}) > 1
    for record in records:
        words = record.caption.split()
        assert words[0] == "a" and words[3] == "moving" and record.caption.endswith("background")
        video = read_video(record.path, 9)
        assert video.shape == (9, 32, 32, 3)
        assert (video[0].float() - video[-1].float()).abs().max() >= 50, "the shape moves"
