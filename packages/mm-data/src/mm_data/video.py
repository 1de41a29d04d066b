"""Video decoding: sample ``num_frames`` frames at a target fps with decord, or PyAV when decord is absent."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import torch

from mm_core.errors import ConfigError, DataError, reason

try:
    import decord
except ImportError:
    decord = None

BACKENDS = ("decord", "pyav")


class UndecodableError(DataError):
    """A video file that a backend cannot decode."""


def default_backend() -> str:
    """The backend ``read_video`` uses when none is forced: decord if importable, else PyAV."""
    return "decord" if decord is not None else "pyav"


def _offsets(num_frames: int, source_fps: float, target_fps: float | None) -> list[int]:
    stride = source_fps / target_fps if target_fps else 1.0
    return [math.floor(i * stride) for i in range(num_frames)]


def frame_indices(
    total: int,
    source_fps: float,
    num_frames: int,
    target_fps: float | None = None,
    start: int | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Indices of ``num_frames`` frames spaced ``source_fps / target_fps`` apart; empty if ``total`` is too short.

    ``start`` is the first index; without it the start is drawn with ``generator``, or is 0 when
    there is none.
    """
    offsets = _offsets(num_frames, source_fps, target_fps)
    last_start = total - offsets[-1] - 1
    if start is None:
        start = 0
        if generator is not None and last_start > 0:
            start = int(torch.randint(0, last_start + 1, (), generator=generator))
    if not 0 <= start <= last_start:
        return []
    return [start + offset for offset in offsets]


def read_video(
    path: str | Path,
    num_frames: int,
    target_fps: float | None = None,
    start: int | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Decode ``num_frames`` frames of ``path`` sampled at ``target_fps`` as uint8 [T, H, W, C].

    ``backend`` forces "decord" or "pyav"; by default decord is tried first when installed.
    """
    if num_frames < 1:
        raise ConfigError(f"num_frames must be at least 1, got {num_frames}")
    path = Path(path)
    chosen = backend or default_backend()
    if chosen not in BACKENDS:
        raise DataError(f"video backend {chosen!r} is not one of {', '.join(BACKENDS)}")
    if chosen == "decord" and decord is None:
        raise DataError("video backend 'decord' is not installed; pip install 'mm-data[decord]' or use 'pyav'")
    if not path.is_file():
        raise DataError(f"video {path} does not exist")
    if chosen == "pyav":
        return _read_pyav(path, num_frames, target_fps, start, generator)
    try:
        return _read_decord(path, num_frames, target_fps, start, generator)
    except UndecodableError:
        # decord fails on some valid files (e.g. 48 pixels wide): unless it was asked for, let PyAV decide.
        if backend == "decord":
            raise
        return _read_pyav(path, num_frames, target_fps, start, generator)


def _sample(
    path: Path,
    total: int,
    fps: float,
    num_frames: int,
    target_fps: float | None,
    start: int | None,
    generator: torch.Generator | None,
) -> list[int]:
    indices = frame_indices(total, fps, num_frames, target_fps, start, generator)
    if not indices:
        rate = f" at {target_fps:g} fps from {fps:g} fps" if target_fps else ""
        at = f" from frame {start}" if start is not None else ""
        needed = _offsets(num_frames, fps, target_fps)[-1] + 1 + (start or 0)
        raise DataError(f"video {path} has {total} frames but {needed} are needed for {num_frames} frames{rate}{at}")
    return indices


def _undecodable(path: Path, exc: Exception) -> UndecodableError:
    return UndecodableError(f"video {path} cannot be decoded as a video file: {reason(exc)}")


def _read_decord(
    path: Path,
    num_frames: int,
    target_fps: float | None,
    start: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except (RuntimeError, decord.DECORDError) as exc:
        raise _undecodable(path, exc) from None
    try:
        total, fps = len(reader), reader.get_avg_fps()
        indices = _sample(path, total, fps, num_frames, target_fps, start, generator)
        frames = reader.get_batch(indices).asnumpy()
    except (RuntimeError, decord.DECORDError) as exc:
        raise _undecodable(path, exc) from None
    finally:
        # Freed here, not by a traceback that keeps this frame: a reader still alive when a DataLoader forks its
        # workers is destroyed in a worker, where its decoding threads do not exist, and the destructor hangs.
        del reader
    return torch.from_numpy(frames)


def _read_pyav(
    path: Path,
    num_frames: int,
    target_fps: float | None,
    start: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"video {path} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            # Containers may not record a frame count; counting packets is cheap and needs no decoding.
            total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        if not fps:
            raise DataError(f"video {path} has no frame rate in its video stream")
        indices = _sample(path, total, fps, num_frames, target_fps, start, generator)
        wanted = set(indices)
        frames = {}
        with av.open(str(path)) as container:
            container.streams.video[0].thread_type = "AUTO"
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")
                if i >= indices[-1]:
                    break
    except av.FFmpegError as exc:
        raise _undecodable(path, exc) from None
    if len(frames) < len(wanted):
        raise DataError(f"video {path} decodes to fewer frames than its container's count of {total}")
    return torch.from_numpy(np.stack([frames[i] for i in indices]))
