"""Video decoding: ``num_frames`` frames at a target fps or stride, with decord (PyAV when decord is absent)."""

from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class FrameSampling:
    """Which frames of a clip to read: ``num_frames`` of them, ``interval`` source frames apart (default: as many as
    take ``target_fps`` from the source's rate, else 1), the stride raised by at most ``speed_factor`` while the clip
    has frames to spare, never among its first ``skip`` frames. With ``min_num_frames`` a clip too short for
    ``num_frames`` gives the most frames it holds of ``k·frame_step + 1``, at least ``min_num_frames`` (MindSpeed-MM's
    short clips: read as they are, never padded)."""

    num_frames: int
    target_fps: float | None = None
    interval: float | None = None
    skip: int = 0
    speed_factor: float = 1.0
    min_num_frames: int | None = None
    frame_step: int = 1

    def offsets(self, total: int, source_fps: float) -> list[int]:
        """Each of the ``num_frames`` frames' offset from the clip's start in a video of ``total`` frames at
        ``source_fps``."""
        stride = self.interval or (source_fps / self.target_fps if self.target_fps else 1.0)
        if self.speed_factor > 1:
            # Speed a long clip up (MindSpeed-MM's speed_factor): as many of its frames at this stride as it has,
            # spread over at most speed_factor times the stride.
            available = math.floor((total - self.skip - 1) / stride) + 1
            stride *= max(1.0, min(self.speed_factor, available / self.num_frames))
        return [math.floor(i * stride) for i in range(self.num_frames)]

    def counts(self) -> list[int]:
        """The frame counts a clip may give, most first: ``num_frames``, then (short clips kept) the shorter
        ``k·frame_step + 1`` counts down to ``min_num_frames``."""
        shorter = range(self.num_frames - 1, (self.min_num_frames or self.num_frames) - 1, -1)
        return [self.num_frames, *(n for n in shorter if (n - 1) % self.frame_step == 0)]

    def frame_count(self, total: int, source_fps: float) -> int:
        """How many frames a video of ``total`` frames at ``source_fps`` gives; 0 when it is too short."""
        offsets = self.offsets(total, source_fps)
        return next((n for n in self.counts() if self.skip + offsets[n - 1] < total), 0)

    def indices(self, total: int, source_fps: float, start: int | None = None,
                generator: torch.Generator | None = None) -> list[int]:
        """The frame indices to read; empty if ``total`` is too short. ``start`` is the first index; without it the
        start is drawn with ``generator`` from the frames past ``skip``, or is ``skip`` when there is none."""
        count = self.frame_count(total, source_fps) if start is None else self.num_frames
        offsets = self.offsets(total, source_fps)[: count or self.num_frames]
        last_start = total - offsets[-1] - 1
        if start is None:
            start = self.skip
            if generator is not None and last_start > self.skip:
                start = int(torch.randint(self.skip, last_start + 1, (), generator=generator))
        if not 0 <= start <= last_start:
            return []
        return [start + offset for offset in offsets]


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
    return FrameSampling(num_frames, target_fps).indices(total, source_fps, start, generator)


def read_video(
    path: str | Path,
    num_frames: int,
    target_fps: float | None = None,
    start: int | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
    sampling: FrameSampling | None = None,
) -> torch.Tensor:
    """Decode ``num_frames`` frames of ``path`` sampled at ``target_fps`` as uint8 [T, H, W, C].

    ``sampling`` replaces ``num_frames`` and ``target_fps`` with a whole :class:`FrameSampling` (stride, skipped
    frames, speed-up). ``backend`` forces "decord" or "pyav"; by default decord is tried first when installed.
    """
    sampling = sampling or FrameSampling(num_frames, target_fps)
    if sampling.num_frames < 1:
        raise ConfigError(f"num_frames must be at least 1, got {sampling.num_frames}")
    path = Path(path)
    chosen = backend or default_backend()
    if chosen not in BACKENDS:
        raise DataError(f"video backend {chosen!r} is not one of {', '.join(BACKENDS)}")
    if chosen == "decord" and decord is None:
        raise DataError("video backend 'decord' is not installed; pip install 'mm-data[decord]' or use 'pyav'")
    if not path.is_file():
        raise DataError(f"video {path} does not exist")
    if chosen == "pyav":
        return _read_pyav(path, sampling, start, generator)
    try:
        return _read_decord(path, sampling, start, generator)
    except UndecodableError:
        # decord fails on some valid files (e.g. 48 pixels wide): unless it was asked for, let PyAV decide.
        if backend == "decord":
            raise
        return _read_pyav(path, sampling, start, generator)


def _sample(
    path: Path,
    total: int,
    fps: float,
    sampling: FrameSampling,
    start: int | None,
    generator: torch.Generator | None,
) -> list[int]:
    indices = sampling.indices(total, fps, start, generator)
    if not indices:
        target = sampling.target_fps
        rate = f" at {target:g} fps from {fps:g} fps" if target and not sampling.interval else ""
        at = f" from frame {start}" if start is not None else (f" past frame {sampling.skip}" if sampling.skip else "")
        fewest = sampling.counts()[-1] if start is None else sampling.num_frames
        needed = sampling.offsets(total, fps)[fewest - 1] + 1 + (sampling.skip if start is None else start)
        raise DataError(f"video {path} has {total} frames but {needed} are needed for {fewest} frames{rate}{at}")
    return indices


def _undecodable(path: Path, exc: Exception) -> UndecodableError:
    return UndecodableError(f"video {path} cannot be decoded as a video file: {reason(exc)}")


def _read_decord(
    path: Path, sampling: FrameSampling, start: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except (RuntimeError, decord.DECORDError) as exc:
        raise _undecodable(path, exc) from None
    try:
        total, fps = len(reader), reader.get_avg_fps()
        indices = _sample(path, total, fps, sampling, start, generator)
        frames = reader.get_batch(indices).asnumpy()
    except (RuntimeError, decord.DECORDError) as exc:
        raise _undecodable(path, exc) from None
    finally:
        # Freed here, not by a traceback that keeps this frame: a reader still alive when a DataLoader forks its
        # workers is destroyed in a worker, where its decoding threads do not exist, and the destructor hangs.
        del reader
    return torch.from_numpy(frames)


def _read_pyav(
    path: Path, sampling: FrameSampling, start: int | None, generator: torch.Generator | None
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
        indices = _sample(path, total, fps, sampling, start, generator)
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
