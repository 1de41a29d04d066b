"""Video transforms: resize and center crop to a training size, and checks of shapes against model factors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mm_core.errors import ConfigError


def resize_center_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [T, H, W, C] -> uint8 [C, T, height, width]: resize keeping aspect to cover, then crop the middle.

    Clips stay uint8 through the loader (a quarter of float32's bytes in shared memory, pinned memory and
    the copy to the device); :func:`normalize_pixels` maps them to [-1, 1] where the model takes them. A
    resize (antialiased bilinear, in float) is rounded back to 8 bits.
    """
    in_h, in_w = video.shape[1:3]
    scale = max(height / in_h, width / in_w)
    size = (max(height, round(in_h * scale)), max(width, round(in_w * scale)))
    frames = video.permute(0, 3, 1, 2)
    if size != (in_h, in_w):
        frames = F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        frames = frames.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return frames[:, :, top : top + height, left : left + width].permute(1, 0, 2, 3).contiguous()


def normalize_pixels(video: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] (x / 127.5 - 1), on the device they are on; float input is returned as is."""
    if video.dtype != torch.uint8:
        return video
    return (video.float() / 127.5 - 1.0).clamp_(-1.0, 1.0)


def check_video_shape(
    num_frames: int, height: int, width: int, temporal_factor: int = 4, spatial_factor: int = 16
) -> None:
    """Raise ConfigError unless num_frames = k * temporal_factor + 1 and height, width divide by spatial_factor.

    The defaults are Wan2.1's: its VAE compresses time by 4 (keeping the first frame) and space by 8,
    and its transformer patches latents by 2.
    """
    if num_frames < 1 or (num_frames - 1) % temporal_factor:
        below = (num_frames - 1) // temporal_factor * temporal_factor + 1
        raise ConfigError(
            f"num_frames {num_frames} must be {temporal_factor}k+1 (e.g. {max(below, 1)} or "
            f"{max(below, 1) + temporal_factor})"
        )
    for name, value in (("height", height), ("width", width)):
        if value < spatial_factor or value % spatial_factor:
            lower = max(value // spatial_factor, 1) * spatial_factor
            raise ConfigError(f"{name} {value} must be a multiple of {spatial_factor} (e.g. {lower})")
