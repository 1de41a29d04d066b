from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mm_core.errors import DataError
from mm_data.video import frame_indices, read_video

HAS_DECORD = importlib.util.find_spec("decord") is not None
BACKENDS = [pytest.param("decord", marks=pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")), "pyav"]


@pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")
def test_decord_and_pyav_agree(counter_video: Path) -> None:
    a = read_video(counter_video, 20, backend="decord")
    b = read_video(counter_video, 20, backend="pyav")
    assert a.shape == b.shape == (20, 32, 64, 3)
    assert a.dtype == b.dtype == torch.uint8
    assert (a.float() - b.float()).abs().max() <= 2


def test_frame_indices_follow_the_fps_ratio() -> None:
    assert frame_indices(20, 24, 5, target_fps=16) == [0, 1, 3, 4, 6]
    assert frame_indices(20, 24, 4, target_fps=12, start=3) == [3, 5, 7, 9]
    assert frame_indices(20, 24, 5) == [0, 1, 2, 3, 4]
    assert frame_indices(6, 24, 4, target_fps=12) == []
    starts = {frame_indices(20, 24, 5, generator=torch.Generator().manual_seed(s))[0] for s in range(30)}
    assert len(starts) > 1 and max(starts) <= 20 - 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_video_samples_the_expected_frames(counter_video: Path, decoded_indices, backend: str) -> None:
    assert decoded_indices(read_video(counter_video, 5, target_fps=16, backend=backend)) == [0, 1, 3, 4, 6]
    assert decoded_indices(read_video(counter_video, 4, target_fps=12, start=3, backend=backend)) == [3, 5, 7, 9]
    expected = frame_indices(20, 24, 6, target_fps=8, generator=torch.Generator().manual_seed(0))
    video = read_video(counter_video, 6, target_fps=8, generator=torch.Generator().manual_seed(0), backend=backend)
    assert decoded_indices(video) == expected


def test_default_backend_decodes_what_decord_cannot(make_counter_video, decoded_indices) -> None:
    narrow = make_counter_video(6, height=32, width=48)
    assert decoded_indices(read_video(narrow, 3, target_fps=12)) == [0, 2, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_file(tmp_path: Path, backend: str) -> None:
    with pytest.raises(DataError, match=r"video .*nope\.mp4 does not exist"):
        read_video(tmp_path / "nope.mp4", 4, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_file(tmp_path: Path, backend: str) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 50)
    with pytest.raises(DataError, match=r"video .*bad\.mp4 cannot be decoded as a video file"):
        read_video(bad, 4, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_clip_says_how_many_frames(counter_video: Path, backend: str) -> None:
    with pytest.raises(DataError, match=r"counter-20-32x64-24\.mp4 has 20 frames but 21 are needed for 21 frames$"):
        read_video(counter_video, 21, backend=backend)
    with pytest.raises(DataError, match=r"has 20 frames but 34 are needed for 12 frames at 8 fps from 24 fps$"):
        read_video(counter_video, 12, target_fps=8, backend=backend)


def test_unknown_backend(counter_video: Path) -> None:
    with pytest.raises(DataError, match="video backend 'ffmpeg' is not one of decord, pyav"):
        read_video(counter_video, 4, backend="ffmpeg")
