"""The custom_dit config sections: the guide's model.json (Wan VAE, UMT5, CustomDiT, flow matching) and data.json."""

from __future__ import annotations

import copy
from typing import Any

from mm_core.config import Config
from mm_core.errors import ConfigError
from mm_models_video import sections

# The tiny CustomDiT of the embedded run: its in_channels and text_dim fit the tiny Wan VAE and UMT5 that
# are built when model.json names no pretrained weights.
PREDICTOR: dict[str, Any] = {
    "model_id": "custom_dit",
    "num_layers": 2,
    "num_heads": 2,
    "head_dim": 16,
    "patch_size": [1, 2, 2],
    "in_channels": 4,
    "out_channels": 4,
    "text_dim": 64,
    "freq_dim": 32,
    "ffn_dim": 64,
    "rope_max_seq_len": 64,
}

MODEL: dict[str, Any] = {
    "ae": copy.deepcopy(sections.AE),
    "text_encoder": copy.deepcopy(sections.TEXT_ENCODER),
    "predictor": PREDICTOR,
    "diffusion": copy.deepcopy(sections.DIFFUSION),
}

# data.json's blocks are validated by mm_data.formats; no data_path means the generated moving-shapes videos.
DATA: dict[str, Any] = {"dataset_param": {}, "dataloader_param": {}, "on_bad_sample": "skip"}

# Clip shape when data.json gives none: small enough for the CPU (4k+1 frames, multiples of 8 × patch).
CLIP = {"num_frames": 9, "max_height": 32, "max_width": 32}

FIXED = {**sections.FIXED, "predictor.model_id": "custom_dit"}


def check_model(model: Config) -> None:
    """Raise a ConfigError for a model.json value naming a component custom_dit does not build."""
    sections.check_fixed(model, FIXED, "custom_dit builds only that")
    patch = model.predictor.patch_size
    if len(patch) != 3 or not all(isinstance(p, int) and p > 0 for p in patch):
        raise ConfigError(f"model.predictor.patch_size must be three positive integers [t, h, w], got {patch!r}")
