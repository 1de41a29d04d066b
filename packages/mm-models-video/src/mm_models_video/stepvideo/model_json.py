"""MindSpeed-MM's Step-Video model.json: its list of text encoders, its architecture keys, the keys mm has no use for.

MindSpeed-MM lists the two text encoders (step_llm, then hunyuan_clip); mm's own files name them ``llm`` and ``clip``.
The file's predictor keys build the transformer (``schema.PREDICTOR_KEYS``) or are checked against the layer design
mm implements (``DESIGN``); Ascend switches are accepted with a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mm_core.config import Config, Unused, wrap
from mm_core.errors import ConfigError
from mm_data.clip_options import CLIP_KEYS

TEXT_ENCODER_PARTS = ("llm", "clip")
TEXT_ENCODERS: dict[str, dict[str, Any]] = {
    "llm": {"model_id": "StepLLmModel", "hub_backend": "hf", "from_pretrained": None, "dtype": None},
    "clip": {"model_id": "BertModel", "hub_backend": "hf", "from_pretrained": None, "dtype": None},
}

# The predictor's layer design in mm's StepVideoModel: a model.json key given must have this value.
DESIGN: dict[str, Any] = {
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "attention_norm_type": "rmsnorm",
    "attention_norm_elementwise_affine": True,
    "attention_norm_eps": 1e-6,
    "dropout": 0.0,
}

_KERNEL = Unused("Ascend kernel switches; torch's attention runs")
PREDICTOR: dict[str, Any] = {
    **dict.fromkeys(DESIGN),
    "patch_size_thw": None,  # [1, p, p]: Step-Video patches space only
    "use_additional_conditions": None,  # TI2V's extra conditions: model.task says it
    "fa_layout": _KERNEL,
    "masked_softmax_fusion": _KERNEL,
}
_FEATURES = Unused("data.json's dataset_type (feature) says whether clips and captions come as features")
TOP: dict[str, Any] = {
    "load_video_features": _FEATURES,
    "load_text_features": _FEATURES,
    "enable_encoder_dp": False,
    "encoder_offload_interval": 1,
    "patch": {"ae_float32": None},  # true: the VAE runs in float32 whatever ae.dtype says
}
AE: dict[str, Any] = {
    "vae_cp_size": 1,
    "i2v_processor": Unused("model.task=i2v (give it to extract TI2V features) conditions on the first frame")
}


def text_encoders(model: Config) -> dict[str, Config]:
    """The llm and clip text encoder entries: mm's mapping or MindSpeed-MM's list [step_llm, hunyuan_clip]."""
    given = model.get("text_encoder") or {}
    if isinstance(given, list):
        if len(given) != len(TEXT_ENCODER_PARTS):
            raise ConfigError(f"model.text_encoder lists {len(given)} encoders; Step-Video has two: "
                              "step_llm (StepLLmModel) then hunyuan_clip (BertModel)")
        given = dict(zip(TEXT_ENCODER_PARTS, given))
    if not isinstance(given, Mapping) or set(given) - set(TEXT_ENCODER_PARTS):
        raise ConfigError(f"model.text_encoder must be a list [step_llm, hunyuan_clip] or a mapping with keys "
                          f"llm, clip; got {given!r}")
    out = {}
    for part, defaults in TEXT_ENCODERS.items():
        entry = given.get(part) or {}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"model.text_encoder.{part} must be a mapping, got {entry!r}")
        unknown = sorted(set(entry) - set(defaults))
        if unknown:
            raise ConfigError(f"model.text_encoder.{part}: unknown key {unknown[0]!r} (known: {', '.join(defaults)})")
        merged = {**defaults, **{k: v for k, v in entry.items() if v is not None}}
        if merged["model_id"] != defaults["model_id"]:
            raise ConfigError(f"model.text_encoder.{part}.model_id must be {defaults['model_id']!r} (mm's stepvideo "
                              f"implements only that), got {merged['model_id']!r}")
        out[part] = wrap(merged)
    return out


def check(model: Config) -> None:
    """The predictor's design keys, patch_size_thw and use_additional_conditions agree with mm's StepVideoModel."""
    predictor = model.predictor
    for key, expected in DESIGN.items():
        if predictor.get(key) is not None and predictor[key] != expected:
            raise ConfigError(f"model.predictor.{key} must be {expected!r} (the layer design of mm's "
                              f"StepVideoModel), got {predictor[key]!r}")
    thw = predictor.get("patch_size_thw")
    if thw is not None:
        patch = predictor.get("patch_size") or thw[-1]
        if list(thw) != [1, patch, patch]:
            raise ConfigError(f"model.predictor.patch_size_thw must be [1, {patch}, {patch}] (Step-Video patches "
                              f"each frame, with patch_size {patch}), got {list(thw)}")
    extra = predictor.get("use_additional_conditions")
    if extra is not None and bool(extra) != (model.task == "i2v"):
        raise ConfigError(f"model.predictor.use_additional_conditions is {extra} but model.task is "
                          f"{model.task!r} (true for i2v only)")


def patch_size(model: Config) -> int | None:
    """The spatial patch size the file gives: patch_size, else patch_size_thw's last entry."""
    predictor = model.predictor
    thw = predictor.get("patch_size_thw")
    return predictor.get("patch_size") or (thw[-1] if thw else None)


_DECODE = Unused("mm decodes with decord (PyAV when missing)")
_TEXT = Unused("captions go to the tokenizers as written")
# data.json dataset_param keys, at its top or under basic_parameters / preprocess_parameters; None: not given (the
# frame and resize keys are read, or named as not honoured, by mm_data.clip_options).
DATASET_KEYS: dict[str, Any] = {
    **dict.fromkeys((
        "dataset_type", "data_path", "json_path", "data_folder", "num_frames", "max_height", "max_width",
        "train_fps", "tokenizer_config", *CLIP_KEYS,
    )),
    "data_storage_mode": Unused("data_path is read as one data.jsonl / data.json index"),
    "video_processor_type": _DECODE,
    "video_reader_type": _DECODE,
    "train_pipeline": Unused("mm resizes and center-crops clips to max_height × max_width"),
    "use_text_processer": _TEXT,
    "enable_text_preprocessing": _TEXT,
}
DATA: dict[str, Any] = {
    "dataset_param": {**DATASET_KEYS, "basic_parameters": dict(DATASET_KEYS),
                      "preprocess_parameters": dict(DATASET_KEYS)},
    "dataloader_param": {
        **dict.fromkeys((
            "batch_size", "num_workers", "shuffle", "seed", "drop_last", "pin_memory", "prefetch_factor",
            "persistent_workers", "group_frame", "group_resolution",
        )),
        "dataloader_mode": Unused("mm's resumable sampler feeds the loader"),
        "sampler_type": Unused("mm's resumable sampler (shuffle, drop_last) replaces it"),
        "collate_param": Unused("mm's collate stacks the clips (features: pads the captions with their mask)"),
    },
    "on_bad_sample": "skip",
}
TOKENIZER_PARTS = {"stepchat": "llm", "BertTokenizer": "clip"}

# MindSpeed-MM's module paths (fsdp2 and recompute patterns) -> mm's StepVideo. Its blocks' attention projections
# are named as in its checkpoints (the converter's renames); the text encoders are a list there.
_BLOCK = "predictor.transformer_blocks.{*}"
MINDSPEED_MODULES = {
    "text_encoder.text_encoders.0": "text_encoder.llm",
    "text_encoder.text_encoders.1": "text_encoder.clip",
    f"{_BLOCK}.attn1.proj_qkv": f"{_BLOCK}.attn1.wqkv",
    f"{_BLOCK}.attn1.proj_out": f"{_BLOCK}.attn1.wo",
    f"{_BLOCK}.attn2.proj_q": f"{_BLOCK}.attn2.wq",
    f"{_BLOCK}.attn2.proj_kv": f"{_BLOCK}.attn2.wkv",
    f"{_BLOCK}.attn2.proj_out": f"{_BLOCK}.attn2.wo",
}


def given(raw: Any) -> Any:
    """``raw`` without its None values: a data.json key at None (the schema's default) is not given."""
    if isinstance(raw, Mapping):
        return {key: given(value) for key, value in raw.items() if value is not None}
    return raw


def data_tokenizers(data: Config) -> dict[str, dict[str, Any]]:
    """data.json's tokenizer_config (MindSpeed-MM tokenizes in its dataset) as model.tokenizer entries, by part."""
    param = data.get("dataset_param") or {}
    entries = next((block.get("tokenizer_config") for block in (param, param.get("basic_parameters") or {},
                                                                param.get("preprocess_parameters") or {})
                    if block.get("tokenizer_config") is not None), None)
    if entries is None:
        return {}
    out = {}
    for entry in entries if isinstance(entries, list) else [entries]:
        name = entry.get("autotokenizer_name") if isinstance(entry, Mapping) else None
        if name not in TOKENIZER_PARTS:
            raise ConfigError(f"data.dataset_param.tokenizer_config: autotokenizer_name must be one of "
                              f"{', '.join(TOKENIZER_PARTS)} (step_llm's, hunyuan_clip's), got {name!r}")
        out[TOKENIZER_PARTS[name]] = {k: entry.get(k) for k in ("from_pretrained", "model_max_length")}
    return out


def with_data_tokenizers(config: Config) -> Config:
    """The model section with data.json's tokenizer_config filling the model.tokenizer keys it leaves unset."""
    from_data = data_tokenizers(config.data)
    if not from_data:
        return config.model
    tokenizer = {part: {**from_data.get(part, {}), **given(entry)} for part, entry in config.model.tokenizer.items()}
    return wrap({**config.model, "tokenizer": tokenizer})
