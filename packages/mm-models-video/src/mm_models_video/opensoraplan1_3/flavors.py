"""Named OpenSoraPlan 1.3 sizes: each component's architecture in the release's own config names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mm_core.errors import ConfigError

# mT5-XXL, the text encoder of OpenSoraPlan 1.3 (transformers' MT5Config names).
MT5_XXL = {
    "vocab_size": 250112,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
}

# WF-VAE D8 4×8×8 as released with OpenSoraPlan 1.3 (its latent scale and shift come from model.json's ae section).
WFVAE_D8 = {
    "latent_dim": 8,
    "base_channels": 128,
    "encoder_num_resblocks": 2,
    "encoder_energy_flow_hidden_size": 64,
    "decoder_num_resblocks": 2,
    "decoder_energy_flow_hidden_size": 128,
    "use_attention": True,
    "dropout": 0.0,
    "norm_type": "layernorm",
    "t_interpolation": "trilinear",
    "connect_res_layer_num": 2,
}

# OpenSoraT2V_v1_3-2B/122: 32 layers of 24 heads of 96, 1×2×2 patches, Skiparse 4 on the middle layers.
PREDICTOR_2B = {
    "num_layers": 32,
    "num_attention_heads": 24,
    "attention_head_dim": 96,
    "in_channels": 8,
    "out_channels": 8,
    "cross_attention_dim": 2304,
    "caption_channels": 4096,
    "patch_size": 2,
    "patch_size_t": 1,
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "sparse1d": True,
    "sparse_n": 4,
}


@dataclass(frozen=True)
class Flavor:
    """One size: component configs, the text length, the default clip shape and fps, the frozen parts' dtype and
    whether the VAE posterior is sampled."""

    predictor: dict[str, Any]
    ae: dict[str, Any] = field(default_factory=lambda: dict(WFVAE_D8))
    text_encoder: dict[str, Any] = field(default_factory=lambda: dict(MT5_XXL))
    text_len: int = 512
    num_frames: int = 93
    height: int = 352
    width: int = 640
    fps: int = 16
    dtype: str = "bf16"
    # Sample the VAE posterior (the release does); an untrained tiny VAE's posterior is mostly noise, so not there.
    do_sample: bool = True


FLAVORS: dict[str, Flavor] = {
    "tiny": Flavor(
        predictor={
            **PREDICTOR_2B,
            "num_layers": 6,
            "num_attention_heads": 4,
            "attention_head_dim": 24,
            "cross_attention_dim": 96,
            "caption_channels": 64,
            "sparse_n": 2,
        },
        ae={
            **WFVAE_D8,
            "base_channels": 8,
            "encoder_num_resblocks": 1,
            "encoder_energy_flow_hidden_size": 8,
            "decoder_num_resblocks": 1,
            "decoder_energy_flow_hidden_size": 8,
            "connect_res_layer_num": 1,
            # Measured on generated clips with the fixed-seed init (pretrained.FROZEN_INIT_SEED): unit latents.
            "shift": [0.017, -0.079, 0.138, 0.034, -0.085, -0.166, -0.045, 0.062],
            "scale": [4.28, 4.22, 4.87, 2.99, 2.56, 4.81, 4.09, 4.13],
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
        text_len=32,
        num_frames=9,
        height=64,
        width=64,
        fps=8,
        dtype="fp32",
        do_sample=False,
    ),
    "2b": Flavor(predictor=PREDICTOR_2B),
}


def get_flavor(name: str) -> Flavor:
    """The flavor called ``name``, or a ConfigError listing the known ones."""
    if name not in FLAVORS:
        raise ConfigError(f"model.flavor {name!r} is not an OpenSoraPlan 1.3 flavor (known: {', '.join(FLAVORS)})")
    return FLAVORS[name]


def flavor_name(model: Mapping[str, Any]) -> str:
    """The model section's flavor: ``model.flavor`` when given, else ``2b`` for a model.json that gives the predictor's
    architecture (a MindSpeed-MM file describes the release), else ``tiny``."""
    if model.get("flavor"):
        return str(model["flavor"])
    predictor = model.get("predictor") or {}
    return "2b" if predictor.get("num_layers") is not None else "tiny"


def model_flavor(model: Mapping[str, Any]) -> Flavor:
    """The :class:`Flavor` of a model section (see :func:`flavor_name`)."""
    return get_flavor(flavor_name(model))
