"""The generated moving-shapes videos a data section falls back to when it names no data (cached on disk)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from mm_data.formats import DatasetParam
from mm_data.synthetic import make_moving_shapes

SYNTHETIC_VIDEOS = 16


def cache_dir() -> Path:
    """Where generated data is cached: $MM_CACHE_DIR, else ~/.cache/mm."""
    return Path(os.environ.get("MM_CACHE_DIR") or Path.home() / ".cache" / "mm")


def with_synthetic_data(param: DatasetParam, fps: int) -> DatasetParam:
    """``param`` itself, or, when it names no data, pointing at the generated moving-shapes dataset (cached)."""
    if param.data_path:
        return param
    folder = make_moving_shapes(
        cache_dir() / "datasets",
        num_videos=SYNTHETIC_VIDEOS,
        num_frames=param.num_frames,
        height=param.max_height,
        width=param.max_width,
        fps=fps,
    )
    return replace(param, data_path=str(folder / "data.json"), data_folder=str(folder))
