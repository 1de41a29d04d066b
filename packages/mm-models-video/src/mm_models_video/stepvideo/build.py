"""Build a StepVideo from the model section: each part from the release's files or from its flavor."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import BertTokenizer

from mm_core.config import Config
from mm_core.errors import ConfigError
from mm_models_video.flow_matching import NoiseToDataFlowMatching
from mm_models_video.pretrained import fixed_init, load_pretrained
from mm_models_video.stepvideo import model_json
from mm_models_video.stepvideo.flavors import Flavor
from mm_models_video.stepvideo.mindspeed_checkpoint import read_mindspeed_checkpoint, split_load
from mm_models_video.stepvideo.model import StepVideo
from mm_models_video.stepvideo.schema import (
    PREDICTOR_KEYS,
    check_model,
    dtype_of,
    flavor_name,
    predictor_arguments,
    text_encoder,
)
from mm_models_video.stepvideo.step_llm import StepTokenizer
from mm_models_video.stepvideo.text_encoders import (
    LLM_TOKENIZER_FILE,
    StepVideoTextEncoders,
    build_clip,
    build_llm,
    tiny_clip_tokenizer,
    tiny_llm_tokenizer,
)
from mm_models_video.stepvideo.transformer import StepVideoModel
from mm_models_video.stepvideo.vae import StepVideoVAE

log = logging.getLogger("mm")

VAE_FILE = "vae_v2.safetensors"
# A transformer this large built without weights is a real model trained from scratch: say so.
REAL_SIZE = 100_000_000
# Where each part lies in a release folder (model.from_pretrained).
RELEASE_LAYOUT = {
    "predictor": "transformer",
    "ae": f"vae/{VAE_FILE}",
    "text_encoder.llm": "step_llm",
    "text_encoder.clip": "hunyuan_clip/clip_text_encoder",
    "tokenizer.llm": f"step_llm/{LLM_TOKENIZER_FILE}",
    "tokenizer.clip": "hunyuan_clip/tokenizer",
}


def part_source(model: Config, part: str) -> str | None:
    """Where ``part`` (a dotted model-section key) loads from: its own from_pretrained, else the release folder's."""
    kind, _, name = part.partition(".")
    if kind == "text_encoder":
        own = text_encoder(model, name).from_pretrained
    elif kind == "tokenizer":
        own = model_json.tokenizers(model)[name].from_pretrained
    else:
        own = model.get_path(f"{part}.from_pretrained")
    if own:
        return str(own)
    return str(Path(model.from_pretrained) / RELEASE_LAYOUT[part]) if model.from_pretrained else None


def _needs(flavor: Flavor, model: Config, part: str, what: str) -> None:
    if flavor_name(model) != "tiny":
        raise ConfigError(f"model.{part}.from_pretrained (or model.from_pretrained) is needed for flavor "
                          f"{flavor_name(model)!r}: {what}")


def build_vae(model: Config, flavor: Flavor) -> StepVideoVAE:
    """The VAE v2 from ``vae_v2.safetensors`` (a file or the folder holding it), else the tiny flavor's."""
    path = part_source(model, "ae")
    dtype = torch.float32 if model.patch.ae_float32 else dtype_of(model.ae.dtype, flavor, "model.ae.dtype")
    if path is None:
        _needs(flavor, model, "ae", f"the release's vae/{VAE_FILE}")
        return fixed_init(lambda: StepVideoVAE(**flavor.vae), dtype)
    file = Path(path) / VAE_FILE if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise ConfigError(f"model.ae.from_pretrained: {file} does not exist (the release's vae/{VAE_FILE})")
    with torch.device("meta"):
        vae = StepVideoVAE(**{**flavor.vae, **({"z_channels": model.ae.z_channels} if model.ae.z_channels else {})})
    vae = vae.to_empty(device="cpu")
    try:
        vae.load_release(file)
    except RuntimeError as exc:
        raise ConfigError(f"model.ae.from_pretrained: {file} is not a Step-Video VAE v2: {str(exc)[:300]}") from None
    return vae.to(dtype)


def build_text_encoders(model: Config, flavor: Flavor) -> StepVideoTextEncoders:
    """step_llm and hunyuan_clip with their tokenizers, from the release's folders or the tiny flavor's."""
    tokenizers = model_json.tokenizers(model)
    llm_len = tokenizers["llm"].model_max_length or flavor.llm_len
    clip_len = tokenizers["clip"].model_max_length or flavor.clip_len
    llm_tokenizer_path, clip_tokenizer_path = part_source(model, "tokenizer.llm"), part_source(model, "tokenizer.clip")
    if llm_tokenizer_path is None:
        _needs(flavor, model, "tokenizer.llm", f"the release's step_llm/{LLM_TOKENIZER_FILE}")
        llm_tokenizer = tiny_llm_tokenizer(llm_len)
    elif not Path(llm_tokenizer_path).is_file():
        raise ConfigError(f"model.tokenizer.llm.from_pretrained: {llm_tokenizer_path} does not exist")
    else:
        llm_tokenizer = StepTokenizer.from_file(llm_tokenizer_path, llm_len)
    if clip_tokenizer_path is None:
        _needs(flavor, model, "tokenizer.clip", "the release's hunyuan_clip/tokenizer")
        clip_tokenizer = tiny_clip_tokenizer(clip_len)
    else:
        clip_tokenizer = load_pretrained(BertTokenizer, clip_tokenizer_path, "model.tokenizer.clip.from_pretrained")
    llm_path, clip_path = part_source(model, "text_encoder.llm"), part_source(model, "text_encoder.clip")
    if llm_path is None:
        _needs(flavor, model, "text_encoder.llm", "the release's step_llm folder")
    if clip_path is None:
        _needs(flavor, model, "text_encoder.clip", "the release's hunyuan_clip/clip_text_encoder")
    llm = build_llm(llm_path, dtype_of(text_encoder(model, "llm").dtype, flavor, "model.text_encoder.llm.dtype"),
                    flavor.llm or {})
    clip = build_clip(clip_path, dtype_of(text_encoder(model, "clip").dtype, flavor, "model.text_encoder.clip.dtype"),
                      flavor.clip or {}, clip_tokenizer.vocab_size)
    return StepVideoTextEncoders(llm, clip, llm_tokenizer, clip_tokenizer, clip_len)


def build_predictor(model: Config, flavor: Flavor, checkpoint: str | None = None) -> StepVideoModel:
    """The trained transformer in float32: the release's transformer/ (checked against model.json), the model.json's
    architecture with a MindSpeed-MM ``checkpoint``'s weights, or the flavor."""
    wanted = predictor_arguments(model, flavor)
    if checkpoint is not None:
        predictor = StepVideoModel(**wanted)
        try:
            predictor.load_state_dict(read_mindspeed_checkpoint(checkpoint, wanted["num_attention_heads"]))
        except RuntimeError as exc:
            raise ConfigError(f"--load {checkpoint} does not fit the model.json's transformer: "
                              f"{str(exc)[:400]}") from None
        return predictor
    path = part_source(model, "predictor")
    if path is None:
        with torch.device("meta"):
            size = sum(p.numel() for p in StepVideoModel(**wanted).parameters())
        if size >= REAL_SIZE:
            log.warning("warning: model.predictor: the model.json architecture (%.2fB parameters) starts from random "
                        "weights (no model.predictor.from_pretrained, model.from_pretrained or --load)", size / 1e9)
        return StepVideoModel(**wanted)
    predictor = load_pretrained(StepVideoModel, path, "model.predictor.from_pretrained", torch_dtype=torch.float32)
    for ours, key in PREDICTOR_KEYS.items():
        value = model.predictor[ours]
        have = predictor.config[key]
        if value is not None and (list(have) if isinstance(have, (list, tuple)) else have) != value:
            raise ConfigError(f"model.predictor.{ours} {value!r} does not match the transformer in {path} "
                              f"({key}={have!r})")
    if bool(predictor.config.use_additional_conditions) != (model.task == "i2v"):
        kind = "TI2V" if predictor.config.use_additional_conditions else "T2V"
        raise ConfigError(f"model.task is {model.task!r} but {path} holds a {kind} transformer")
    return predictor


def build_model(model: Config) -> StepVideo:
    """The StepVideo the model section describes; parts without pretrained files are built from the flavor."""
    model, checkpoint = split_load(model)
    flavor = check_model(model)
    external = [name for name, part in (("ae", "ae"), ("text_encoder.llm", "text_encoder.llm"),
                                        ("text_encoder.clip", "text_encoder.clip")) if part_source(model, part)]
    return StepVideo(
        ae=build_vae(model, flavor),
        text_encoder=build_text_encoders(model, flavor),
        predictor=build_predictor(model, flavor, checkpoint),
        diffusion=NoiseToDataFlowMatching(
            model.diffusion.num_train_timesteps, float(model.diffusion.shift), float(model.diffusion.sigma_min),
            model.diffusion.extra_one_step,
        ),
        task=model.task,
        motion_score=float(model.motion_score),
        do_sample=flavor.vae_sample if model.ae.do_sample is None else model.ae.do_sample,
        external=external,
    )
