"""The frozen Wan VAE, UMT5 text encoder and CLIP image encoder: their architectures, from pretrained weights or
fixed-seed ones."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKLWan
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from mm_core.config import Config
from mm_models_video.pretrained import fixed_init, load_pretrained

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

# The tiny VAE and UMT5 of the embedded runs and tests (fixed-seed random weights).
TINY_VAE = {
    "base_dim": 8,
    "z_dim": 4,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    # Measured on generated clips with the fixed-seed init (pretrained.FROZEN_INIT_SEED).
    "latents_mean": [0.33, 0.7, 0.2, 0.25],
    "latents_std": [0.125, 0.18, 0.125, 0.09],
    **VAE_STRIDES,
}
TINY_UMT5 = {
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
}

# The image encoder of Wan2.1 I2V: OpenCLIP ViT-H/14 at 224 pixels, 257 tokens of 1280 (diffusers' image_encoder/).
CLIP_VIT_H = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 1024,
    "hidden_act": "gelu",
}
TINY_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 32,
    "hidden_act": "gelu",
}


def clip_tokens(config: CLIPVisionConfig) -> int:
    """The tokens a CLIP vision tower gives per image: its patches and the class token."""
    return (config.image_size // config.patch_size) ** 2 + 1


def build_image_encoder(path: str | None, dtype: torch.dtype, architecture: dict[str, Any]) -> CLIPVisionModel:
    """The CLIP vision tower from the transformers folder ``path``, else the CLIPVisionConfig keys ``architecture``."""
    if path:
        return load_pretrained(CLIPVisionModel, path, "model.image_encoder.from_pretrained", dtype=dtype)
    return fixed_init(lambda: CLIPVisionModel(CLIPVisionConfig(**architecture)), dtype)


def build_image_processor(path: str | None, architecture: dict[str, Any]) -> CLIPImageProcessor:
    """The CLIP preprocessing (resize, center crop, normalize) from ``path``, else sized for ``architecture``."""
    if path:
        return load_pretrained(CLIPImageProcessor, path, "model.image_processor.from_pretrained")
    size = architecture["image_size"]
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def build_vae(ae: Config, path: str | None, dtype: torch.dtype, architecture: dict[str, Any]) -> AutoencoderKLWan:
    """The Wan VAE from the diffusers vae/ folder ``path``, else ``architecture``; tiled as the ``ae`` section says."""
    if path:
        vae = load_pretrained(AutoencoderKLWan, path, "model.ae.from_pretrained", torch_dtype=dtype)
    else:
        vae = fixed_init(lambda: AutoencoderKLWan(**architecture), dtype)
    if ae.enable_tiling:
        vae.enable_tiling(**{k: v for k, v in ae.tiling_param.items() if v is not None})
    return vae


def build_text_encoder(path: str | None, dtype: torch.dtype, architecture: dict[str, Any]) -> UMT5EncoderModel:
    """UMT5 from the transformers folder ``path``, else the UMT5Config keys ``architecture``."""
    if path:
        return load_pretrained(UMT5EncoderModel, path, "model.text_encoder.from_pretrained", dtype=dtype)
    return fixed_init(lambda: UMT5EncoderModel(UMT5Config(**architecture)), dtype)
