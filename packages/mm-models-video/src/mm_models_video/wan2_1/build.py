"""Build a WanT2V from the model section: each part from pretrained weights (diffusers layout) or from its flavor."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import WanTransformer3DModel
from transformers import AutoTokenizer

from mm_core.config import Config
from mm_core.errors import ConfigError
from mm_models_video.encoders import build_text_encoder, build_vae
from mm_models_video.flow_matching import FlowMatching
from mm_models_video.pretrained import load_pretrained, source
from mm_models_video.tokenizer import build_char_tokenizer
from mm_models_video.wan2_1.flavors import Flavor
from mm_models_video.wan2_1.model import WanT2V
from mm_models_video.wan2_1.schema import check_model, dtype_of

# The seeds' predictor keys (MindSpeed-MM's wandit) and the WanTransformer3DModel arguments they set.
PREDICTOR_KEYS = {
    "patch_size": "patch_size",
    "in_dim": "in_channels",
    "out_dim": "out_channels",
    "ffn_dim": "ffn_dim",
    "freq_dim": "freq_dim",
    "text_dim": "text_dim",
    "num_heads": "num_attention_heads",
    "num_layers": "num_layers",
    "cross_attn_norm": "cross_attn_norm",
    "eps": "eps",
    "max_seq_len": "rope_max_seq_len",
}


def predictor_overrides(predictor: Config, flavor: Flavor) -> dict[str, Any]:
    """The WanTransformer3DModel arguments the model.json predictor keys set (hidden_size and qk_norm translated)."""
    out = {PREDICTOR_KEYS[k]: v for k, v in predictor.items() if k in PREDICTOR_KEYS and v is not None}
    if "patch_size" in out:
        out["patch_size"] = tuple(out["patch_size"])
    if predictor.qk_norm_type not in (None, "rmsnorm"):
        raise ConfigError(f"model.predictor.qk_norm_type must be 'rmsnorm', got {predictor.qk_norm_type!r}")
    if predictor.qk_norm is not None:
        out["qk_norm"] = "rms_norm_across_heads" if predictor.qk_norm else None
    if predictor.hidden_size is not None:
        heads = out.get("num_attention_heads", flavor.predictor["num_attention_heads"])
        if predictor.hidden_size % heads:
            raise ConfigError(
                f"model.predictor.hidden_size {predictor.hidden_size} is not divisible by num_heads {heads}"
            )
        out["attention_head_dim"] = predictor.hidden_size // heads
        if out["attention_head_dim"] % 2:
            raise ConfigError(
                f"model.predictor.hidden_size {predictor.hidden_size} / num_heads {heads} = "
                f"{out['attention_head_dim']} per head, which must be even (rotary embedding)"
            )
    return out


def _check_matches(predictor: WanTransformer3DModel, wanted: dict[str, Any], path: str) -> None:
    names = {**{v: k for k, v in PREDICTOR_KEYS.items()}, "attention_head_dim": "hidden_size", "qk_norm": "qk_norm"}
    for key, value in wanted.items():
        have = predictor.config[key]
        if (list(have) if isinstance(have, (list, tuple)) else have) != (
            list(value) if isinstance(value, (list, tuple)) else value
        ):
            raise ConfigError(
                f"model.predictor.{names[key]} does not match the transformer in {path}: "
                f"it gives {key}={value!r}, the weights have {key}={have!r}"
            )


def build_predictor(model: Config, flavor: Flavor) -> WanTransformer3DModel:
    """The trained transformer in float32: from pretrained weights (checked against model.json) or the flavor."""
    wanted = predictor_overrides(model.predictor, flavor)
    path = source(model, "predictor", "transformer")
    if path is None:
        return WanTransformer3DModel(**{**flavor.predictor, **wanted})
    predictor = load_pretrained(
        WanTransformer3DModel, path, "model.predictor.from_pretrained", torch_dtype=torch.float32
    )
    _check_matches(predictor, wanted, path)
    return predictor


def build_model(model: Config) -> WanT2V:
    """The WanT2V the model section describes; parts without from_pretrained are built from the flavor."""
    flavor = check_model(model)
    ae_path = source(model, "ae", "vae")
    text_path = source(model, "text_encoder", "text_encoder")
    tokenizer_path = source(model, "tokenizer", "tokenizer")
    if tokenizer_path:
        tokenizer = load_pretrained(AutoTokenizer, tokenizer_path, "model.tokenizer.from_pretrained")
    elif model.flavor == "tiny":
        tokenizer = build_char_tokenizer()
    else:
        raise ConfigError(
            f"model.tokenizer.from_pretrained (or model.from_pretrained) is needed for flavor {model.flavor!r}: "
            "the UMT5 tokenizer of Wan2.1, e.g. Wan2.1-T2V-1.3B-Diffusers/tokenizer"
        )
    text_dtype = dtype_of(model.text_encoder.dtype, flavor, "model.text_encoder.dtype")
    return WanT2V(
        ae=build_vae(model.ae, ae_path, dtype_of(model.ae.dtype, flavor, "model.ae.dtype"), flavor.ae),
        text_encoder=build_text_encoder(text_path, text_dtype, flavor.text_encoder),
        tokenizer=tokenizer,
        predictor=build_predictor(model, flavor),
        diffusion=FlowMatching.from_config(model.diffusion),
        text_len=model.predictor.text_len or flavor.text_len,
        norm_latents=model.ae.norm_latents,
        do_sample=model.ae.do_sample,
        external=[part for part, path in (("ae", ae_path), ("text_encoder", text_path)) if path],
    )
