"""The model.json sections the video families share (Wan VAE, UMT5, flow matching) and the values mm fixes in them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mm_core.config import Config
from mm_core.errors import ConfigError

AE: dict[str, Any] = {
    "model_id": "wan_video_vae",
    "from_pretrained": None,
    "dtype": None,
    "enable_tiling": False,
    "tiling_param": {
        "tile_sample_min_height": None,
        "tile_sample_min_width": None,
        "tile_sample_stride_height": None,
        "tile_sample_stride_width": None,
    },
    "norm_latents": True,
    "norm_mode": "channel_specified_shift_scale",
    "do_sample": False,
}

TEXT_ENCODER: dict[str, Any] = {"model_id": "UMT5", "hub_backend": "hf", "from_pretrained": None, "dtype": None}

DIFFUSION: dict[str, Any] = {
    "model_id": "wan_flow_match_scheduler",
    "num_train_timesteps": 1000,
    "shift": 5.0,
    "sigma_min": 0.0,
    "extra_one_step": True,
}

# Values these sections' keys must have: mm implements exactly these components.
FIXED = {
    "ae.model_id": "wan_video_vae",
    "ae.norm_mode": "channel_specified_shift_scale",
    "text_encoder.model_id": "UMT5",
    "text_encoder.hub_backend": "hf",
    "diffusion.model_id": "wan_flow_match_scheduler",
}


def check_fixed(model: Config, fixed: Mapping[str, Any], why: str) -> None:
    """A ConfigError for the first dotted key of ``fixed`` whose model.json value differs, ``why`` in parentheses."""
    for dotted, expected in fixed.items():
        value = model.get_path(dotted)
        if value != expected:
            raise ConfigError(f"model.{dotted} must be {expected!r} ({why}), got {value!r}")
