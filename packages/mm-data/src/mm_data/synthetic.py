"""Generated video datasets: coloured shapes moving over a background, with captions, in the seeds' format."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import av
import numpy as np
import torch

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def video_codec() -> str:
    """The first video codec PyAV can encode here: libx264, else mpeg4."""
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
        except av.FFmpegError:
            continue
        return name
    raise RuntimeError("PyAV can encode neither libx264 nor mpeg4")


def write_video(path: str | Path, frames: torch.Tensor | np.ndarray, fps: int) -> Path:
    """Encode uint8 RGB frames [T, H, W, C] (H and W even) to an mp4 at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames, dtype=np.uint8)
    codec = video_codec()
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "12"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def _shape_mask(shape: str, ys: np.ndarray, xs: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = ys - cy, xs - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    return (dy <= r) & (np.abs(dx) <= (dy + r) / 2)


def _moving_shape(
    rng: np.random.Generator, num_frames: int, height: int, width: int
) -> tuple[np.ndarray, str]:
    shape = SHAPES[rng.integers(len(SHAPES))]
    fg, bg = rng.choice(list(COLOURS), size=2, replace=False)
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    (ux, uy), r = DIRECTIONS[direction], min(height, width) / 6
    # Travel from one side to the other so the motion spans the whole clip.
    cx0 = width / 2 - ux * (width / 2 - r)
    cy0 = height / 2 - uy * (height / 2 - r)
    speed_x = ux * (width - 2 * r) / max(num_frames - 1, 1)
    speed_y = uy * (height - 2 * r) / max(num_frames - 1, 1)
    ys, xs = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[:] = COLOURS[bg]
    for t in range(num_frames):
        frames[t][_shape_mask(shape, ys, xs, cy0 + speed_y * t, cx0 + speed_x * t, r)] = COLOURS[fg]
    return frames, f"a {fg} {shape} moving {direction} on a {bg} background"


def make_moving_shapes(
    root: str | Path,
    num_videos: int = 8,
    num_frames: int = 17,
    height: int = 64,
    width: int = 64,
    fps: int = 8,
    seed: int = 0,
) -> Path:
    """Write (or reuse) a dataset of moving-shape mp4s with captions and a ``data.json``; returns its folder."""
    params = {"num_videos": num_videos, "num_frames": num_frames, "height": height, "width": width,
              "fps": fps, "seed": seed}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(root) / f"moving_shapes-{key}"
    index = folder / "data.json"
    if index.is_file():
        return folder
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(num_videos):
        frames, caption = _moving_shape(rng, num_frames, height, width)
        name = f"videos/video{i:06d}.mp4"
        write_video(folder / name, frames, fps)
        entries.append({"path": name, "cap": caption, "num_frames": num_frames, "fps": fps,
                        "resolution": {"height": height, "width": width}})
    # data.json appears last and atomically, so its presence marks a complete dataset.
    tmp = index.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(entries, indent=2))
    os.replace(tmp, index)
    return folder
