"""Helpers for the opensoraplan1_3 tests: Skiparse as a dense mask, small-clip overrides, the effective config."""

from __future__ import annotations

import torch

from mm_core.config import Config
from mm_core.plugins import load_plugins, make_config

QUIET = ["logging.progress_bar=false"]


def skiparse_dense_bias(length: int, sparse_n: int, grouped: bool, video_bias: torch.Tensor | None) -> torch.Tensor:
    """The additive mask [B or 1, 1, S, S] under which dense attention is Skiparse: query and key in one subset."""
    positions = torch.arange(length)
    subset = (positions // sparse_n) % sparse_n if grouped else positions % sparse_n
    same = subset[:, None] == subset[None, :]
    bias = torch.where(same, 0.0, float("-inf"))[None, None]
    if video_bias is not None:
        bias = bias + video_bias[:, None, None, :]
    return bias


def osp_config(*overrides: str, task: str = "run", files: tuple = (), sections: dict | None = None) -> Config:
    """The effective opensoraplan1_3 config with ``overrides``, as ``mm`` builds it."""
    return make_config(load_plugins(["opensoraplan1_3"]), task, list(files), sections, [*QUIET, *overrides])
