"""Video transforms: resize and center crop to a training size, and checks of shapes against model factors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mm_core.errors import ConfigError


def resize_center_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [T, H, W, C] -> float [C, T, height, width] in [-1, 1]: resize keeping aspect to cover, then crop.

    Frames that need no resize are cropped while still uint8; the result is written once, in its final
    layout, and normalized in place (the same float ops, a third of the time of converting everything first).
    """
    in_h, in_w = video.shape[1:3]
    scale = max(height / in_h, width / in_w)
    size = (max(height, round(in_h * scale)), max(width, round(in_w * scale)))
    frames = video.permute(0, 3, 1, 2)
    if size != (in_h, in_w):
        frames = F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    crop = frames[:, :, top : top + height, left : left + width]
    out = torch.empty((crop.shape[1], crop.shape[0], height, width), dtype=torch.float32)
    out.copy_(crop.permute(1, 0, 2, 3))
    return out.div_(127.5).sub_(1.0).clamp_(-1.0, 1.0)


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
