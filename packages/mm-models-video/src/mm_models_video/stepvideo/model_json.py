"""MindSpeed-MM's Step-Video model.json: its list of text encoders, its architecture keys, the keys mm has no use for.

MindSpeed-MM lists the two text encoders (step_llm, then hunyuan_clip); mm's own files name them ``llm`` and ``clip``.
The file's predictor keys build the transformer (``schema.PREDICTOR_KEYS``) or are checked against the layer design
mm implements (``DESIGN``); Ascend switches are accepted with a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mm_core.config import Config, Unused, wrap
from mm_core.errors import ConfigError
from mm_data.clip_options import CLIP_KEYS

TEXT_ENCODER_PARTS = ("llm", "clip")
TEXT_ENCODERS: dict[str, dict[str, Any]] = {
    "llm": {"model_id": "StepLLmModel", "hub_backend": "hf", "from_pretrained": None, "dtype": None},
    "clip": {"model_id": "BertModel", "hub_backend": "hf", "from_pretrained": None, "dtype": None},
}
TOKENIZERS: dict[str, dict[str, Any]] = {
    "llm": {"autotokenizer_name": "stepchat", "hub_backend": "hf", "from_pretrained": None, "model_max_length": None},
    "clip": {"autotokenizer_name": "BertTokenizer", "hub_backend": "hf", "from_pretrained": None,
             "model_max_length": None},
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
# The inference model.json's run keys: inference_values reads them where the inference section keeps its defaults.
INFERENCE_KEYS: dict[str, Any] = {
    **dict.fromkeys(("prompt", "image", "save_path", "fps", "num_inference_videos_per_sample")),
    "pipeline_config": {
        **dict.fromkeys(("input_size", "guidance_scale", "motion_score", "model_type")),
        "version": Unused("mm infer runs Step-Video's sampler"),
        "use_attention_mask": Unused("mm infer always masks the text tokens past each prompt"),
    },
    "unload_text_encoder": Unused("mm infer encodes the prompts first and keeps the text encoders where they are"),
    "frame_interval": Unused("mm infer writes every generated frame"),
    "use_prompt_preprocess": Unused("mm infer encodes the prompts as given"),
    "pipeline_class": Unused("mm infer runs Step-Video's sampler (TI2V when pipeline_config.model_type or "
                             "model.task is i2v)"),
    "device": Unused("mm infer runs on the device its runtime gives (CUDA when present)"),
    "dtype": Unused("each part's dtype (model.predictor.dtype ...) sets its dtype"),
}
# The inference model.json's diffusion key: its sampling steps (inference.steps).
DIFFUSION: dict[str, Any] = {"num_inference_timesteps": None}
_FEATURES = Unused("data.json's dataset_type (feature) says whether clips and captions come as features")
TOP: dict[str, Any] = {
    "load_video_features": _FEATURES,
    "load_text_features": _FEATURES,
    "enable_encoder_dp": False,
    "encoder_offload_interval": 1,
    "patch": {"ae_float32": None},  # true: the VAE runs in float32 whatever ae.dtype says
    **INFERENCE_KEYS,
}
AE: dict[str, Any] = {
    "vae_cp_size": 1,
    "i2v_processor": Unused("model.task=i2v (give it to extract TI2V features) conditions on the first frame")
}


def _parts(model: Config, key: str, defaults: Mapping[str, dict[str, Any]], id_key: str) -> dict[str, Config]:
    """model.<key>'s llm and clip entries, defaults filled in: mm's mapping or MindSpeed-MM's list (step_llm's,
    then hunyuan_clip's); ``id_key`` must name the class mm implements."""
    given = model.get(key) or {}
    names = " then ".join(f"{part} ({entry[id_key]})" for part, entry in defaults.items())
    if isinstance(given, list):
        if len(given) != len(TEXT_ENCODER_PARTS):
            raise ConfigError(f"model.{key} lists {len(given)} entries; Step-Video has two: {names}")
        given = dict(zip(TEXT_ENCODER_PARTS, given))
    if not isinstance(given, Mapping) or set(given) - set(TEXT_ENCODER_PARTS):
        raise ConfigError(f"model.{key} must be a list [{names}] or a mapping with keys llm, clip; got {given!r}")
    out = {}
    for part, part_defaults in defaults.items():
        entry = given.get(part) or {}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"model.{key}.{part} must be a mapping, got {entry!r}")
        unknown = sorted(set(entry) - set(part_defaults))
        if unknown:
            raise ConfigError(f"model.{key}.{part}: unknown key {unknown[0]!r} (known: {', '.join(part_defaults)})")
        merged = {**part_defaults, **{k: v for k, v in entry.items() if v is not None}}
        if merged[id_key] != part_defaults[id_key]:
            raise ConfigError(f"model.{key}.{part}.{id_key} must be {part_defaults[id_key]!r} (mm's stepvideo "
                              f"implements only that), got {merged[id_key]!r}")
        out[part] = wrap(merged)
    return out


def text_encoders(model: Config) -> dict[str, Config]:
    """The llm and clip text encoder entries: mm's mapping or MindSpeed-MM's list [step_llm, hunyuan_clip]."""
    return _parts(model, "text_encoder", TEXT_ENCODERS, "model_id")


def tokenizers(model: Config) -> dict[str, Config]:
    """The llm and clip tokenizer entries: mm's mapping or MindSpeed-MM's list [stepchat, BertTokenizer]."""
    return _parts(model, "tokenizer", TOKENIZERS, "autotokenizer_name")


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


# data.json dataset_param keys, at its top or under basic_parameters / preprocess_parameters; None: not given (the
# frame, resize, caption-dropout and text-processing keys are read, or named as not honoured, by
# mm_data.clip_options).
DATASET_KEYS: dict[str, Any] = {
    **dict.fromkeys((
        "dataset_type", "data_path", "json_path", "data_folder", "num_frames", "max_height", "max_width",
        "train_fps", "tokenizer_config", *CLIP_KEYS,
    )),
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


def with_tokenizers(model: Config, from_data: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    """The model section with ``model.tokenizer`` as the mapping {llm, clip} (defaults filled in), ``from_data``'s
    entries filling the keys it leaves unset."""
    from_data = from_data or {}
    tokenizer = {part: {**entry, **{k: v for k, v in from_data.get(part, {}).items() if entry.get(k) is None}}
                 for part, entry in tokenizers(model).items()}
    return wrap({**model, "tokenizer": tokenizer})


def with_data_tokenizers(config: Config) -> Config:
    """The model section with data.json's tokenizer_config filling the model.tokenizer keys it leaves unset."""
    return with_tokenizers(config.model, data_tokenizers(config.data))


def inference_task(model: Config) -> Config:
    """The model section with ``task`` i2v when an inference model.json's ``pipeline_config.model_type`` says i2v
    (model.task left at t2v); one error when the two disagree otherwise."""
    named = (model.get("pipeline_config") or {}).get("model_type")
    if named is None or named == model.task:
        return model
    if named not in ("t2v", "i2v") or model.task != "t2v":
        raise ConfigError(f"model.pipeline_config.model_type is {named!r} but model.task is {model.task!r}: "
                          "give one task, t2v or i2v")
    return wrap({**model, "task": named})


def inference_values(config: Config) -> Config:
    """The inference section with what a MindSpeed-MM inference model.json gives (prompt, image, fps, save_path,
    num_inference_videos_per_sample, pipeline_config's input_size / guidance_scale / motion_score, diffusion's
    num_inference_timesteps) where the section keeps its defaults."""
    inf = Config(config.inference)
    model = config.model
    pipeline = model.get("pipeline_config") or {}
    frames_hw = pipeline.get("input_size")
    if frames_hw is not None and (not isinstance(frames_hw, list) or len(frames_hw) != 3):
        raise ConfigError(f"model.pipeline_config.input_size must be [frames, height, width], got {frames_hw!r}")
    values = {
        **{key: model.get(key) for key in ("prompt", "image", "fps", "num_inference_videos_per_sample")},
        **{key: pipeline.get(key) for key in ("guidance_scale", "motion_score")},
        "steps": model.diffusion.get("num_inference_timesteps"),
        **(dict(zip(("num_frames", "height", "width"), frames_hw)) if frames_hw else {}),
    }
    if model.get("save_path") is not None:
        values["output"] = str(Path(model.save_path) / Path(inf.output).name)
    for key, value in values.items():
        if value is not None and config.source_of(f"inference.{key}") is None:
            inf[key] = value
    return inf
