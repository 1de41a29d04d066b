"""Decoding a whole generated clip to frames (PyAV), for scoring and for deriving synthetic pairs."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from mm_core.errors import DataError


def read_frames(path: str | Path) -> np.ndarray:
    """Every frame of the video at ``path`` as uint8 RGB [T, H, W, 3]; DataError when it cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"video {path} does not exist")
    try:
        with av.open(str(path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except av.FFmpegError as exc:
        raise DataError(f"video {path} cannot be decoded: {exc}") from None
    if not frames:
        raise DataError(f"video {path} has no frames")
    return np.stack(frames)
