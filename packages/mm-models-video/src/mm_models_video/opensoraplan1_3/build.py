"""Build an OpenSoraPlanT2V (or its I2V) from the model section: each part from pretrained weights or its flavor."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, MT5Config, MT5EncoderModel

from mm_convert.load_cache import is_mindspeed_checkpoint
from mm_core.config import Config, wrap
from mm_core.errors import ConfigError, reason
from mm_models_video.opensoraplan1_3.diffusion import OpenSoraDiffusion
from mm_models_video.opensoraplan1_3.flavors import Flavor, flavor_name
from mm_models_video.opensoraplan1_3.inpaint import OpenSoraInpaint, OpenSoraPlanI2V
from mm_models_video.opensoraplan1_3.mindspeed import check_predictor
from mm_models_video.opensoraplan1_3.mindspeed_checkpoint import (
    read_mindspeed_checkpoint,
    release_names,
)
from mm_models_video.opensoraplan1_3.model import OpenSoraPlanT2V
from mm_models_video.opensoraplan1_3.schema import AE_KEYS, check_model, dtype_of, predictor_overrides
from mm_models_video.opensoraplan1_3.transformer import OpenSoraT2V
from mm_models_video.opensoraplan1_3.wfvae import WFVAEModel
from mm_models_video.pretrained import fixed_init, load_pretrained, source
from mm_models_video.tokenizer import build_char_tokenizer

log = logging.getLogger("mm")

# The release's checkpoint files keep the weights under one of these keys (EMA first, as its loader does).
NESTED_STATE = ("ema_state_dict", "state_dict", "gen_model", "model", "module")


def read_state_dict(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors / .pt / .ckpt file, unwrapped from the release's nesting (ConfigError if not)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist")
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(
            path, map_location="cpu", weights_only=True
        )
    except Exception as exc:  # noqa: BLE001 (any unreadable file is the same config error)
        raise ConfigError(f"{key}: cannot read {path}: {reason(exc)}") from None
    for nested in NESTED_STATE:
        while isinstance(state, dict) and isinstance(state.get(nested), dict) and state[nested]:
            state = state[nested]
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_weights(module: torch.nn.Module, path: str | Path, key: str,
                 tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Load a state-dict file (or its ``tensors`` read already) into ``module`` strictly; a mismatch names the first
    missing or unexpected keys."""
    try:
        result = module.load_state_dict(read_state_dict(path, key) if tensors is None else tensors, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise ConfigError(f"{key}: {path} does not fit the configured {type(module).__name__}: {reason(exc)}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"{key}: {path} does not fit the configured {type(module).__name__}: "
            f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
        )


def ae_arguments(ae: Config, flavor: Flavor) -> dict[str, Any]:
    """The WFVAEModel arguments: the flavor's, overridden by the model.json ae keys given."""
    return {**flavor.ae, **{k: ae[k] for k in AE_KEYS if ae.get(k) is not None}}


def build_vae(model: Config, flavor: Flavor) -> WFVAEModel:
    """WF-VAE from ae.from_pretrained (a state-dict file, e.g. vae_convert's, or a diffusers folder) or fixed init;
    chunked along time with ``ae.use_tiling``."""
    ae = model.ae
    dtype = dtype_of(ae.dtype, flavor, "model.ae.dtype")
    if model.patch.ae_float32:
        dtype = torch.float32
    arguments = ae_arguments(ae, flavor)
    path = ae.from_pretrained
    if path and Path(path).expanduser().is_dir():
        vae = load_pretrained(WFVAEModel, str(path), "model.ae.from_pretrained", torch_dtype=dtype)
    else:
        vae = fixed_init(lambda: WFVAEModel(**arguments), torch.float32)
        if path:
            load_weights(vae, path, "model.ae.from_pretrained")
        vae = vae if dtype == torch.float32 else vae.to(dtype)
    vae.enable_tiling(bool(ae.use_tiling))
    return vae


def build_text_encoder(model: Config, flavor: Flavor) -> MT5EncoderModel:
    """mT5's encoder from text_encoder.from_pretrained (a transformers folder), else the flavor's (fixed init)."""
    dtype = dtype_of(model.text_encoder.dtype, flavor, "model.text_encoder.dtype")
    path = source(model, "text_encoder", "text_encoder")
    if path:
        return load_pretrained(MT5EncoderModel, path, "model.text_encoder.from_pretrained", dtype=dtype)
    if (name := flavor_name(model)) != "tiny":
        raise ConfigError(
            f"model.text_encoder.from_pretrained is needed for flavor {name!r}: mT5-XXL, e.g. google/mt5-xxl"
        )
    return fixed_init(lambda: MT5EncoderModel(MT5Config(**flavor.text_encoder)), dtype)


def build_tokenizer(model: Config) -> Any:
    """The tokenizer of tokenizer.from_pretrained (else the text encoder's folder); the tiny flavor's is built here."""
    path = source(model, "tokenizer", "tokenizer") or model.text_encoder.from_pretrained
    if path:
        return load_pretrained(AutoTokenizer, str(path), "model.tokenizer.from_pretrained")
    if flavor_name(model) != "tiny":
        raise ConfigError(
            f"model.tokenizer.from_pretrained is needed for flavor {flavor_name(model)!r}: mT5's, e.g. google/mt5-xxl"
        )
    return build_char_tokenizer()


def build_predictor(model: Config, flavor: Flavor, checkpoint: str | None = None) -> OpenSoraT2V:
    """The trained transformer in float32: the release folder or state-dict file of predictor.from_pretrained, or
    the flavor with the model.json keys (loading the MindSpeed-MM ``checkpoint`` given)."""
    i2v = model.task == "i2v"
    cls = OpenSoraInpaint if i2v else OpenSoraT2V
    arguments = {**flavor.predictor, **predictor_overrides(model.predictor)}
    if i2v:
        arguments["vae_scale_factor_t"] = model.predictor.vae_scale_factor_t or 4
    path = checkpoint or source(model, "predictor", "transformer")
    if not checkpoint and path and Path(path).expanduser().is_dir():
        predictor = load_pretrained(cls, path, "model.predictor.from_pretrained", torch_dtype=torch.float32)
        check_predictor(predictor_overrides(model.predictor), predictor.config, model.predictor,
                        f"{path}/config.json")
        return predictor
    try:
        predictor = cls(**arguments)
    except ValueError as exc:
        raise ConfigError(f"model.predictor: {exc}") from None
    if checkpoint:
        load_weights(predictor, checkpoint, "--load (model.from_pretrained)", read_mindspeed_checkpoint(checkpoint))
    elif path:
        where = "model.predictor.from_pretrained"
        load_weights(predictor, path, where, release_names(read_state_dict(path, where), f"{where} {path}"))
    elif (flavor_name(model) != "tiny" or predictor_overrides(model.predictor)) and os.environ.get("RANK", "0") == "0":
        count = sum(p.numel() for p in predictor.parameters())
        log.warning("warning: opensoraplan1_3: the predictor (%.2fB parameters, from the model section) starts from "
                    "random weights; give --load DIR or model.predictor.from_pretrained (the release's transformer "
                    "folder) to start from trained ones", count / 1e9)
    return predictor


def build_model(model: Config) -> OpenSoraPlanT2V:
    """The OpenSoraPlanT2V (or OpenSoraPlanI2V for task i2v) the model section describes."""
    flavor = check_model(model)
    checkpoint = None
    loaded = Path(model.from_pretrained).expanduser() if model.from_pretrained else None
    if loaded is not None and not model.predictor.from_pretrained and is_mindspeed_checkpoint(loaded):
        # --load names MindSpeed-MM's predictor checkpoint; the other parts load from their own from_pretrained
        checkpoint, model = str(model.from_pretrained), wrap({**model, "from_pretrained": None})
    cls = OpenSoraPlanI2V if model.task == "i2v" else OpenSoraPlanT2V
    external = [part for part, path in (("ae", model.ae.from_pretrained),
                                        ("text_encoder", source(model, "text_encoder", "text_encoder"))) if path]
    return cls(
        ae=build_vae(model, flavor),
        text_encoder=build_text_encoder(model, flavor),
        tokenizer=build_tokenizer(model),
        predictor=build_predictor(model, flavor, checkpoint),
        diffusion=OpenSoraDiffusion.from_config(model.diffusion),
        text_len=model.tokenizer.model_max_length or flavor.text_len,
        do_sample=flavor.do_sample if model.ae.do_sample is None else model.ae.do_sample,
        external=external,
    )
