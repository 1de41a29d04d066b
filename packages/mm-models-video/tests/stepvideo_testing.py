"""Helpers for the stepvideo tests: the effective config with quiet, short overrides."""

from __future__ import annotations

from mm_core.config import Config
from mm_core.plugins import load_plugins, make_config

QUIET = ["logging.progress_bar=false"]


def stepvideo_config(*overrides: str, task: str = "run") -> Config:
    """The effective stepvideo config with ``overrides``, as ``mm`` builds it."""
    return make_config(load_plugins(["stepvideo"]), task, [], None, [*QUIET, *overrides])
