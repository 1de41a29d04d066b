"""Shared fixtures: tiny generated videos."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mm_data.synthetic import make_moving_shapes, write_video

LEVEL0, LEVEL_STEP = 10, 12


def _counter_frames(num_frames: int, height: int, width: int) -> torch.Tensor:
    levels = LEVEL0 + LEVEL_STEP * torch.arange(num_frames, dtype=torch.uint8)
    return levels.view(-1, 1, 1, 1).expand(num_frames, height, width, 3).contiguous()


@pytest.fixture(scope="session")
def make_counter_video(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(num_frames, height=32, width=64, fps=24)``: an mp4 of grey frames whose brightness encodes the index."""
    folder = tmp_path_factory.mktemp("counter")

    def make(num_frames: int, height: int = 32, width: int = 64, fps: int = 24) -> Path:
        path = folder / f"counter-{num_frames}-{height}x{width}-{fps}.mp4"
        return path if path.is_file() else write_video(path, _counter_frames(num_frames, height, width), fps)

    return make


@pytest.fixture(scope="session")
def counter_video(make_counter_video: Callable[..., Path]) -> Path:
    """A 20-frame, 24 fps, 32x64 counter mp4."""
    return make_counter_video(20)


@pytest.fixture(scope="session")
def decoded_indices() -> Callable[[torch.Tensor], list[int]]:
    """Maps decoded counter frames [T, H, W, C] back to their source frame indices."""
    return lambda video: [round((frame.float().mean().item() - LEVEL0) / LEVEL_STEP) for frame in video]


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 9-frame 32x32 moving-shape videos with a data.json."""
    return make_moving_shapes(tmp_path_factory.mktemp("shapes"), num_videos=6, num_frames=9, height=32, width=32)
