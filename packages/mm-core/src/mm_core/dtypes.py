"""The dtype names configs use (MindSpeed-MM's ``bf16``, ``fp16``, ``fp32`` and torch's long names)."""

from __future__ import annotations

import torch

from mm_core.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def parse_dtype(name: str, key: str) -> torch.dtype:
    """The torch dtype ``name`` stands for; a ConfigError naming config key ``key`` when it is none of DTYPES."""
    if name not in DTYPES:
        raise ConfigError(f"{key} must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]
