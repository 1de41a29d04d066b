"""Named Step-Video sizes: the transformer, VAE and text encoders of each, and the clip shape it trains on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mm_core.errors import ConfigError
from mm_models_video.stepvideo.text_encoders import CLIP_LEN, LLM_LEN, TINY_CLIP, TINY_STEP_LLM


@dataclass(frozen=True)
class Flavor:
    """One size of Step-Video: component configs, text lengths, the default clip shape and dtype."""

    predictor: dict[str, Any]
    vae: dict[str, Any] = field(default_factory=dict)
    llm: dict[str, Any] | None = None
    clip: dict[str, Any] | None = None
    llm_len: int = LLM_LEN
    clip_len: int = CLIP_LEN
    num_frames: dict[str, int] = field(default_factory=lambda: {"t2v": 136, "i2v": 102})
    height: int = 544
    width: int = 992
    fps: int = 8
    dtype: str = "bf16"
    # Latents as the release encodes them (a posterior sample); the tiny random VAE's posterior is mostly noise.
    vae_sample: bool = True


FLAVORS: dict[str, Flavor] = {
    "tiny": Flavor(
        predictor={
            "num_attention_heads": 4,
            "attention_head_dim": 32,
            "in_channels": 4,
            "out_channels": 4,
            "num_layers": 2,
            "caption_channels": [TINY_STEP_LLM["hidden_size"], TINY_CLIP["hidden_size"]],
            "rope_ch_split": [16, 8, 8],
        },
        vae={
            "z_channels": 4,
            "encoder_ch": 4,
            "encoder_ch_mult": [2, 2, 4, 4],
            "decoder_ch": 8,
            "decoder_ch_mult": [1, 1, 2, 2],
            "num_res_blocks": 1,
            "norm_groups": 4,
        },
        llm=TINY_STEP_LLM,
        clip=TINY_CLIP,
        llm_len=32,
        clip_len=16,
        num_frames={"t2v": 17, "i2v": 17},
        height=32,
        width=32,
        dtype="fp32",
        vae_sample=False,
    ),
    # Step-Video-T2V / TI2V: 30B parameters, 48 layers of 48 heads of 128; VAE v2 with 64 latent channels.
    "30b": Flavor(
        predictor={
            "num_attention_heads": 48,
            "attention_head_dim": 128,
            "in_channels": 64,
            "out_channels": 64,
            "num_layers": 48,
            "caption_channels": [6144, 1024],
        },
    ),
}


def get_flavor(name: str) -> Flavor:
    """The flavor called ``name``, or a ConfigError listing the known ones."""
    if name not in FLAVORS:
        raise ConfigError(f"model.flavor {name!r} is not a Step-Video flavor (known: {', '.join(FLAVORS)})")
    return FLAVORS[name]
