"""Named Wan2.1 T2V sizes: the architecture of each component, in diffusers' and transformers' own config names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mm_core.errors import ConfigError

# The Wan2.1 VAE compresses time by 4 (keeping the first frame) and space by 8.
VAE_STRIDES = {"scale_factor_temporal": 4, "scale_factor_spatial": 8}

# UMT5-XXL, the text encoder of every Wan2.1 model.
UMT5_XXL = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
}


@dataclass(frozen=True)
class Flavor:
    """One size of Wan2.1: component configs, the text length and the default clip shape."""

    predictor: dict[str, Any]
    ae: dict[str, Any] = field(default_factory=lambda: dict(VAE_STRIDES))
    text_encoder: dict[str, Any] = field(default_factory=lambda: dict(UMT5_XXL))
    text_len: int = 512
    num_frames: int = 81
    height: int = 480
    width: int = 832
    fps: int = 16
    dtype: str = "bf16"


FLAVORS: dict[str, Flavor] = {
    "tiny": Flavor(
        predictor={
            "patch_size": (1, 2, 2),
            "num_attention_heads": 4,
            "attention_head_dim": 32,
            "in_channels": 4,
            "out_channels": 4,
            "text_dim": 64,
            "freq_dim": 64,
            "ffn_dim": 256,
            "num_layers": 4,
            "rope_max_seq_len": 256,
        },
        ae={
            "base_dim": 8,
            "z_dim": 4,
            "dim_mult": [1, 1, 1, 1],
            "num_res_blocks": 1,
            "temperal_downsample": [False, True, True],
            # Measured on generated clips with the fixed-seed init (build.FROZEN_INIT_SEED).
            "latents_mean": [0.33, 0.7, 0.2, 0.25],
            "latents_std": [0.125, 0.18, 0.125, 0.09],
            **VAE_STRIDES,
        },
        text_encoder={
            "vocab_size": 128,
            "d_model": 64,
            "d_kv": 16,
            "d_ff": 128,
            "num_layers": 2,
            "num_heads": 4,
            "relative_attention_num_buckets": 8,
            "relative_attention_max_distance": 32,
            "feed_forward_proj": "gated-gelu",
            "dropout_rate": 0.0,
        },
        text_len=64,
        num_frames=17,
        height=64,
        width=64,
        fps=8,
        dtype="fp32",
    ),
    "1.3b": Flavor(
        predictor={
            "patch_size": (1, 2, 2),
            "num_attention_heads": 12,
            "attention_head_dim": 128,
            "in_channels": 16,
            "out_channels": 16,
            "text_dim": 4096,
            "freq_dim": 256,
            "ffn_dim": 8960,
            "num_layers": 30,
            "rope_max_seq_len": 1024,
        },
    ),
    "14b": Flavor(
        predictor={
            "patch_size": (1, 2, 2),
            "num_attention_heads": 40,
            "attention_head_dim": 128,
            "in_channels": 16,
            "out_channels": 16,
            "text_dim": 4096,
            "freq_dim": 256,
            "ffn_dim": 13824,
            "num_layers": 40,
            "rope_max_seq_len": 1024,
        },
        height=720,
        width=1280,
    ),
}


def get_flavor(name: str) -> Flavor:
    """The flavor called ``name``, or a ConfigError listing the known ones."""
    if name not in FLAVORS:
        raise ConfigError(f"model.flavor {name!r} is not a Wan2.1 flavor (known: {', '.join(FLAVORS)})")
    return FLAVORS[name]


def flavor_of(transformer_config: dict[str, Any]) -> str | None:
    """The flavor whose transformer has the depth and width of ``transformer_config``, if any."""
    shape = ("num_layers", "num_attention_heads", "attention_head_dim")
    for name, flavor in FLAVORS.items():
        if all(transformer_config.get(key) == flavor.predictor[key] for key in shape):
            return name
    return None
