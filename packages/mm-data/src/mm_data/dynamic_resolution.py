"""Per-clip training shapes (Open-Sora-Plan's dynamic resolution and frame count) and the resize that makes them.

Each clip is planned from its index metadata alone, before any decoding, so that batches can be grouped by shape:
its size is the fixed ``max_height × max_width`` (``force_resolution``) or its own, scaled down to at most
``max_hxw`` pixels and cropped to multiples of ``hw_stride``; its frame count is what ``train_fps`` (or
``frame_interval``, past ``skip_frame_num`` frames) leaves of it (a longer clip sped up by at most ``speed_factor``
first), at most ``num_frames``, trimmed to ``k·vae_stride_t + 1`` frames whose latent count is a multiple of
``latent_frame_multiple`` (the largest context-parallel size). Clips too small, too short or too far from the aspect
are left out (None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mm_core.errors import ConfigError
from mm_data.transforms import resize_center_crop
from mm_data.video import FrameSampling


def max_hxw_size(height: int, width: int, max_hxw: int) -> tuple[int, int]:
    """(height, width) scaled down, keeping the aspect, to at most ``max_hxw`` pixels (unchanged when smaller)."""
    if height * width <= max_hxw:
        return height, width
    scale = math.sqrt(max_hxw / (height * width))
    return int(height * scale), int(width * scale)


def stride_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """(height, width) rounded down to multiples of ``stride``."""
    return height // stride * stride, width // stride * stride


def _aspect_ok(height: int, width: int, low: float, high: float) -> bool:
    return low <= height / width <= high


@dataclass(frozen=True)
class ClipPlanner:
    """Plans each clip's training (frames, height, width) from the data.json's preprocessing parameters."""

    num_frames: int
    min_num_frames: int
    max_height: int
    max_width: int
    max_hxw: int | None = None
    min_hxw: int | None = None
    hw_stride: int = 32
    hw_aspect_thr: float = 2.0
    force_resolution: bool = True
    train_fps: float | None = None
    vae_stride_t: int = 4
    latent_frame_multiple: int = 1
    speed_factor: float = 1.0
    # auto_interval false: the stride between frames (else train_fps sets it); frames at a clip's start never read.
    frame_interval: float | None = None
    skip_frame_num: int = 0

    def __post_init__(self) -> None:
        if not self.force_resolution and not self.max_hxw:
            raise ConfigError(
                "data.dataset_param.max_hxw is needed when force_resolution is false (dynamic resolution)"
            )
        if self.speed_factor < 1:
            raise ConfigError(f"data.dataset_param.speed_factor must be at least 1, got {self.speed_factor}")
        if self.min_num_frames > self.num_frames:
            raise ConfigError(
                f"data.dataset_param.min_num_frames {self.min_num_frames} is above num_frames {self.num_frames}"
            )

    def size(self, height: int | None, width: int | None) -> tuple[int, int] | None:
        """The training size of a clip of ``height × width``; None to leave it out (unknown, small or misshapen)."""
        if not height or not width or height <= 0 or width <= 0:
            return None
        if self.force_resolution:
            aspect = self.max_height / self.max_width
            if not _aspect_ok(height, width, aspect / self.hw_aspect_thr, aspect * self.hw_aspect_thr):
                return None
            return self.max_height, self.max_width
        h, w = stride_size(*max_hxw_size(height, width, self.max_hxw), self.hw_stride)
        if h <= 0 or w <= 0 or (self.min_hxw and h * w < self.min_hxw):
            return None
        if not _aspect_ok(h, w, 1 / self.hw_aspect_thr, self.hw_aspect_thr):
            return None
        return h, w

    def _speed(self, num_frames: int, fps: float | None) -> tuple[int, float]:
        """Frames the clip has at ``train_fps``, after speeding it up by at most ``speed_factor`` (never below
        ``num_frames``), and that speed-up."""
        interval = self.frame_interval or 1.0
        if not self.frame_interval and self.train_fps and fps and abs(fps - self.train_fps) >= 0.1:
            interval = fps / self.train_fps
        available = math.ceil(max(num_frames - self.skip_frame_num, 0) / interval)
        speed = 1.0
        if self.speed_factor > 1 and available > self.num_frames:
            speed = min(self.speed_factor, available / self.num_frames)
            available = int(available / speed)
        return available, speed

    def frame_count(self, num_frames: int | None, fps: float | None) -> int | None:
        """How many frames to train on from a clip of ``num_frames`` at ``fps``; None when too short."""
        if not num_frames:
            return None
        available = min(self._speed(num_frames, fps)[0], self.num_frames)
        for count in range(available, self.min_num_frames - 1, -1):
            latents = (count - 1) // self.vae_stride_t + 1
            if (count - 1) % self.vae_stride_t == 0 and latents % self.latent_frame_multiple == 0:
                return count
        return None

    def read_fps(self, num_frames: int | None, fps: float | None) -> float | None:
        """The frame rate to sample the clip at: ``train_fps`` (or its own) times its speed-up; None: every frame."""
        base = self.train_fps or fps
        if base is None or not num_frames:
            return self.train_fps
        return base * self._speed(num_frames, fps)[1]

    def sampling(self, frames: int, num_frames: int | None, fps: float | None) -> FrameSampling:
        """How to read ``frames`` frames of a clip of ``num_frames`` at ``fps``: at :meth:`read_fps`, or
        ``frame_interval`` apart (times the clip's speed-up), past its first ``skip_frame_num`` frames."""
        if self.frame_interval:
            speed = self._speed(num_frames, fps)[1] if num_frames else 1.0
            return FrameSampling(frames, None, self.frame_interval * speed, self.skip_frame_num)
        return FrameSampling(frames, self.read_fps(num_frames, fps), None, self.skip_frame_num)

    def plan(self, num_frames: int | None, fps: float | None, height: int | None,
             width: int | None) -> tuple[int, int, int] | None:
        """(frames, height, width) to train on, or None to leave the clip out."""
        size = self.size(height, width)
        count = self.frame_count(num_frames, fps)
        return None if size is None or count is None else (count, *size)

    def resize(self, video: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """uint8 [T, H, W, C] -> uint8 [C, T, height, width] as planned: center crop-resize, or max-area resize then
        a center crop to the stride multiples."""
        if self.force_resolution:
            return resize_center_crop(video, height, width)
        return max_hxw_stride_crop(video, self.max_hxw, height, width)


def max_hxw_stride_crop(video: torch.Tensor, max_hxw: int, height: int, width: int) -> torch.Tensor:
    """uint8 [T, H, W, C] scaled to at most ``max_hxw`` pixels (antialiased bilinear), center-cropped to
    ``height × width``; uint8 [C, T, height, width]."""
    in_h, in_w = video.shape[1:3]
    size = max_hxw_size(in_h, in_w, max_hxw)
    if size[0] < height or size[1] < width:
        raise ValueError(f"a {in_h}×{in_w} clip scaled to {size[0]}×{size[1]} cannot be cropped to {height}×{width}")
    frames = video.permute(0, 3, 1, 2)
    if size != (in_h, in_w):
        frames = F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True, align_corners=True)
        frames = frames.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return frames[:, :, top : top + height, left : left + width].permute(1, 0, 2, 3).contiguous()
