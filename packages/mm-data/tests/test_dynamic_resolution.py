"""Per-clip training shapes: static or max-area sizes cropped to the stride, frames trimmed for the VAE and CP."""

from __future__ import annotations

import pytest
import torch

from mm_core.errors import ConfigError
from mm_data.dynamic_resolution import ClipPlanner, max_hxw_size, max_hxw_stride_crop

# The seeds' data_dynamic_resolution.json and data_static_resolution.json.
DYNAMIC = ClipPlanner(num_frames=93, min_num_frames=29, max_height=352, max_width=640, max_hxw=225280,
                      hw_stride=32, force_resolution=False, train_fps=16)
STATIC = ClipPlanner(num_frames=93, min_num_frames=93, max_height=352, max_width=640, train_fps=16)


def test_dynamic_size_is_the_clip_scaled_to_max_hxw_and_cropped_to_the_stride() -> None:
    assert max_hxw_size(720, 1280, 225280) == (355, 632)
    assert DYNAMIC.size(720, 1280) == (352, 608)
    assert DYNAMIC.size(240, 320) == (224, 320)  # small clips are not enlarged
    assert DYNAMIC.size(1280, 400) is None  # taller than hw_aspect_thr 2 allows
    assert STATIC.size(720, 1280) == (352, 640) and STATIC.size(1280, 720) is None


def test_frames_at_train_fps_trimmed_to_vae_and_cp_multiples() -> None:
    assert DYNAMIC.frame_count(300, 30.0) == 93  # 160 frames at 16 fps, the first 93 kept
    assert DYNAMIC.frame_count(80, 16.0) == 77  # 4k+1
    assert DYNAMIC.frame_count(20, 16.0) is None  # below min_num_frames
    assert STATIC.frame_count(80, 16.0) is None
    cp16 = ClipPlanner(num_frames=93, min_num_frames=29, max_height=352, max_width=640, latent_frame_multiple=16)
    assert cp16.frame_count(93, None) == 61  # 16 latent frames: a multiple of cp 16 (93 frames' 24 is not)
    assert DYNAMIC.plan(300, 30.0, 720, 1280) == (93, 352, 608)


def test_speed_factor_samples_long_clips_faster() -> None:
    """A clip longer than num_frames at train_fps is sampled up to speed_factor times faster (never below)."""
    fast = ClipPlanner(num_frames=93, min_num_frames=29, max_height=352, max_width=640, train_fps=16,
                       speed_factor=2.0)
    assert fast.read_fps(400, 16.0) == 32.0 and fast.frame_count(400, 16.0) == 93  # 400 frames -> 200 at 2x
    assert fast.read_fps(140, 16.0) == pytest.approx(16 * 140 / 93)  # only as fast as fills 93 frames
    assert fast.read_fps(60, 16.0) == 16.0 and fast.frame_count(60, 16.0) == 57
    assert DYNAMIC.read_fps(400, 30.0) == 16
    with pytest.raises(ConfigError, match="speed_factor must be at least 1"):
        ClipPlanner(num_frames=9, min_num_frames=9, max_height=32, max_width=32, speed_factor=0.5)


def test_resize_then_stride_crop() -> None:
    video = torch.randint(0, 256, (5, 720, 1280, 3), dtype=torch.uint8)
    out = max_hxw_stride_crop(video, 225280, 352, 608)
    assert out.shape == (3, 5, 352, 608) and out.dtype == torch.uint8
    assert DYNAMIC.resize(video, 352, 608).shape == (3, 5, 352, 608)
    assert STATIC.resize(video, 352, 640).shape == (3, 5, 352, 640)


def test_dynamic_resolution_needs_max_hxw() -> None:
    with pytest.raises(ConfigError, match="max_hxw is needed when force_resolution is false"):
        ClipPlanner(num_frames=93, min_num_frames=29, max_height=352, max_width=640, force_resolution=False)
