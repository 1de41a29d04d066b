"""The clip shapes a video model takes: num_frames - 1 and height / width multiples of its VAE strides × patch."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mm_core.errors import ConfigError
from mm_data.transforms import check_video_shape


def clip_factors(vae_strides: tuple[int, int], patch_size: Sequence[int]) -> tuple[int, int]:
    """(frames, pixels) factors of a clip: the VAE's (temporal, spatial) strides × the patch [t, h, w]."""
    temporal, spatial = vae_strides
    return temporal * patch_size[0], spatial * math.lcm(*patch_size[1:])


def check_clip(num_frames: int, height: int, width: int, factors: tuple[int, int], where: str, why: str) -> None:
    """A ConfigError ``where: <the misfit> <why>`` unless the clip shape fits the (frames, pixels) ``factors``."""
    try:
        check_video_shape(num_frames, height, width, *factors)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc} {why}") from None
