"""Build a WanT2V or WanI2V (model.task) from the model section: each part from pretrained weights (diffusers layout)
or from its flavor."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from transformers import AutoTokenizer

from mm_core.config import Config
from mm_core.errors import ConfigError
from mm_models_video.encoders import (
    build_image_encoder,
    build_image_processor,
    build_text_encoder,
    build_vae,
    clip_tokens,
)
from mm_models_video.flow_matching import FlowMatching
from mm_models_video.pretrained import load_pretrained, source
from mm_models_video.tokenizer import build_char_tokenizer
from mm_models_video.wan2_1.flavors import Flavor, task_of
from mm_models_video.wan2_1.flf2v import flf2v_overrides, image_tokens
from mm_models_video.wan2_1.i2v import WanI2V
from mm_models_video.wan2_1.mindspeed import condition_tiling, diffusers_tiling
from mm_models_video.wan2_1.model import WanT2V
from mm_models_video.wan2_1.schema import check_model, dtype_of

log = logging.getLogger("mm")

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


def predictor_overrides(predictor: Config, flavor: Flavor, task: str = "t2v") -> dict[str, Any]:
    """The WanTransformer3DModel arguments the model.json predictor keys set (hidden_size and qk_norm translated;
    img_dim only for I2V: MindSpeed-MM's T2V files carry it too)."""
    out = {PREDICTOR_KEYS[k]: v for k, v in predictor.items() if k in PREDICTOR_KEYS and v is not None}
    if task == "i2v" and predictor.img_dim is not None:
        out["image_dim"] = predictor.img_dim
    if task == "i2v":
        out.update(flf2v_overrides(predictor, flavor))
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
        if task == "i2v":
            out["added_kv_proj_dim"] = predictor.hidden_size
        if out["attention_head_dim"] % 2:
            raise ConfigError(
                f"model.predictor.hidden_size {predictor.hidden_size} / num_heads {heads} = "
                f"{out['attention_head_dim']} per head, which must be even (rotary embedding)"
            )
    return out


def _check_matches(predictor: WanTransformer3DModel, wanted: dict[str, Any], path: str) -> None:
    names = {**{v: k for k, v in PREDICTOR_KEYS.items()}, "attention_head_dim": "hidden_size", "qk_norm": "qk_norm",
             "image_dim": "img_dim", "added_kv_proj_dim": "hidden_size", "pos_embed_seq_len": "model_type"}
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
    wanted = predictor_overrides(model.predictor, flavor, model.task)
    path = source(model, "predictor", "transformer")
    if path is None:
        predictor = WanTransformer3DModel(**{**flavor.predictor_for(model.task), **wanted})
        if model.flavor != "tiny" and int(os.environ.get("RANK", "0")) == 0:
            count = sum(p.numel() for p in predictor.parameters())
            log.warning("warning: wan2_1: the %s transformer (%.2fB parameters) starts from random weights; give "
                        "--load DIR or model.from_pretrained (a diffusers folder) to start from trained ones",
                        model.flavor, count / 1e9)
        return predictor
    predictor = load_pretrained(
        WanTransformer3DModel, path, "model.predictor.from_pretrained", torch_dtype=torch.float32
    )
    if task_of(predictor.config) != model.task:
        raise ConfigError(
            f"model.task is {model.task!r} but the transformer in {path} is a Wan2.1 {task_of(predictor.config)} "
            "model (an image branch, image_dim, is what makes I2V)"
        )
    _check_matches(predictor, wanted, path)
    return predictor


def image_encoder_source(model: Config) -> str | None:
    """Where the CLIP image encoder loads from: image_encoder.from_pretrained, MindSpeed-MM's
    ae.i2v_processor.image_encoder, else image_encoder/ of model.from_pretrained."""
    return model.ae.i2v_processor.image_encoder or source(model, "image_encoder", "image_encoder")


def build_i2v_parts(model: Config, flavor: Flavor) -> tuple[Any, Any, int]:
    """The frozen CLIP vision tower, its preprocessing and its token count (checked against clip_token_len)."""
    path = image_encoder_source(model)
    dtype = dtype_of(model.image_encoder.dtype, flavor, "model.image_encoder.dtype")
    encoder = build_image_encoder(path, dtype, flavor.image_encoder)
    processor_path = source(model, "image_processor", "image_processor")
    if processor_path and not model.image_processor.from_pretrained and not Path(processor_path).is_dir():
        processor_path = None  # a folder without image_processor/: size the preprocessing for the encoder
    architecture = {"image_size": encoder.config.image_size}
    processor = build_image_processor(processor_path, architecture)
    tokens = clip_tokens(encoder.config)
    if model.predictor.clip_token_len not in (None, tokens):
        raise ConfigError(
            f"model.predictor.clip_token_len is {model.predictor.clip_token_len} but the image encoder gives "
            f"{tokens} tokens per image ({encoder.config.image_size} px / patch {encoder.config.patch_size}, squared, "
            "+ 1)"
        )
    return encoder, processor, tokens


def build_model(model: Config) -> WanT2V:
    """The WanT2V (or WanI2V, model.task i2v) the model section describes; parts without from_pretrained are built
    from the flavor."""
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
    ae_section = Config({**model.ae, "tiling_param": diffusers_tiling(model.ae.tiling_param)})
    text_dtype = dtype_of(model.text_encoder.dtype, flavor, "model.text_encoder.dtype")
    parts = {
        "ae": build_vae(ae_section, ae_path, dtype_of(model.ae.dtype, flavor, "model.ae.dtype"), flavor.ae),
        "text_encoder": build_text_encoder(text_path, text_dtype, flavor.text_encoder),
        "tokenizer": tokenizer,
        "predictor": build_predictor(model, flavor),
        "diffusion": FlowMatching.from_config(model.diffusion),
        "text_len": model.predictor.text_len or flavor.text_len,
        "norm_latents": model.ae.norm_latents,
        "do_sample": model.ae.do_sample,
    }
    external = [part for part, path in (("ae", ae_path), ("text_encoder", text_path)) if path]
    if model.task == "t2v":
        return WanT2V(**parts, external=external)
    encoder, processor, tokens = build_i2v_parts(model, flavor)
    if image_encoder_source(model):
        external.append("image_encoder")
    return WanI2V(**parts, image_encoder=encoder, image_processor=processor,
                  image_tokens=image_tokens(parts["predictor"], tokens),
                  condition_tiling=condition_tiling(ae_section, parts["ae"]), external=external)
