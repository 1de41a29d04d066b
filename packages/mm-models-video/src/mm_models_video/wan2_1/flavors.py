"""Named Wan2.1 T2V sizes: the architecture of each component, in diffusers' and transformers' own config names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mm_core.errors import ConfigError
from mm_models_video.encoders import TINY_UMT5, TINY_VAE, UMT5_XXL, VAE_STRIDES


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
        ae=TINY_VAE,
        text_encoder=TINY_UMT5,
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
