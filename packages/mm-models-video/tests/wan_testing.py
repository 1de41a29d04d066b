"""Helpers for the wan2_1 tests: small-clip overrides and the effective config."""

from __future__ import annotations

from mm_core.config import Config
from mm_core.plugins import load_plugins, make_config

# Clips small enough for a CPU test: 9 frames (4k+1) of 32x32 (multiples of VAE stride 8 × patch 2).
SMALL_CLIPS = [
    "data.dataset_param.num_frames=9",
    "data.dataset_param.max_height=32",
    "data.dataset_param.max_width=32",
]
QUIET = ["logging.progress_bar=false"]


def wan_config(*overrides: str, task: str = "run", files: tuple = (), sections: dict | None = None) -> Config:
    """The effective wan2_1 config with small clips and ``overrides``, as ``mm`` builds it."""
    return make_config(load_plugins(["wan2_1"]), task, list(files), sections, [*SMALL_CLIPS, *QUIET, *overrides])
