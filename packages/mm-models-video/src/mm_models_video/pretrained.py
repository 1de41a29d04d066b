"""Loading the parts of a video model: from pretrained weights (diffusers / transformers layout) or fixed-seed ones."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm_core.errors import ConfigError, reason

# Seed of the random weights of a frozen part built from its architecture (no pretrained weights).
FROZEN_INIT_SEED = 0


def source(model: Mapping, part: str, subfolder: str) -> str | None:
    """Where component ``part`` loads from: its own from_pretrained, else ``subfolder`` of model.from_pretrained."""
    own = model[part].get("from_pretrained")
    if own:
        return str(own)
    return str(Path(model["from_pretrained"]) / subfolder) if model.get("from_pretrained") else None


def load_pretrained(cls: Any, path: str, key: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(path)``; a missing or unloadable path is a ConfigError naming the config ``key``."""
    local = Path(path).expanduser()
    if not local.exists() and path.startswith((".", "/", "~")):
        raise ConfigError(f"{key}: {path} does not exist")
    try:
        return cls.from_pretrained(str(local) if local.exists() else path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{key}: cannot load {cls.__name__} from {path}: {reason(exc)}") from None


def fixed_init(factory: Callable[[], nn.Module], dtype: torch.dtype) -> nn.Module:
    """Build a frozen part with a fixed seed, so every run, extraction and inference share its weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FROZEN_INIT_SEED)
        module = factory()
    return module if dtype == torch.float32 else module.to(dtype)
