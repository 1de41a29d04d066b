"""The stepvideo config sections (model.json, data.json, inference, extract) and the checks defaults cannot express.

MindSpeed-MM's model.json loads unchanged (``model_json``): its text encoder list, architecture keys and the keys mm
has no use for. Without ``flavor``, a file that loads its encoders or release from files is the 30b model.
"""

from __future__ import annotations

from typing import Any

import torch

from mm_core.config import Config
from mm_core.dtypes import parse_dtype
from mm_core.errors import ConfigError
from mm_models_video import sections
from mm_models_video.stepvideo import model_json
from mm_models_video.stepvideo.flavors import Flavor, get_flavor

TASKS = ("t2v", "i2v")

MODEL: dict[str, Any] = {
    "flavor": None,  # see flavor_name
    # The release folder (stepvideo-t2v / stepvideo-ti2v): transformer/, vae/, step_llm/, hunyuan_clip/.
    "from_pretrained": None,
    "task": "t2v",
    "motion_score": 5.0,
    "ae": {
        "model_id": "stepvideovae",
        "from_pretrained": None,
        "dtype": None,
        "z_channels": None,
        "frame_len": 17,
        "version": 2,
        "do_sample": None,
        **model_json.AE,
    },
    # {llm: {...}, clip: {...}} or MindSpeed-MM's list [step_llm, hunyuan_clip]: read through text_encoder().
    "text_encoder": None,
    # {llm: {...}, clip: {...}} or MindSpeed-MM's list [stepchat, BertTokenizer]: read through model_json.tokenizers.
    "tokenizer": None,
    "predictor": {
        "model_id": "stepvideodit",
        "from_pretrained": None,
        "dtype": None,
        "num_layers": None,
        "num_heads": None,
        "head_dim": None,
        "channel_split": None,
        "in_channels": None,
        "out_channels": None,
        "patch_size": None,
        "caption_channels": None,
        "pipeline_num_layers": None,
        **model_json.PREDICTOR,
    },
    "diffusion": {
        "model_id": "flow_match_discrete_scheduler",
        "num_train_timesteps": 1000,
        "shift": 13.0,
        "sigma_min": 0.0,
        "extra_one_step": True,
        "reverse": False,
        "solver": "euler",
        **model_json.DIFFUSION,
    },
    **model_json.TOP,
}

DATA: dict[str, Any] = model_json.DATA

INFERENCE: dict[str, Any] = {
    "checkpoint": None,
    "prompt": "a red circle moving right on a blue background",
    "negative_prompt": "",
    "image": None,
    "num_frames": None,
    "height": None,
    "width": None,
    "steps": 50,
    "guidance_scale": 9.0,
    "time_shift": None,
    "motion_score": None,
    "num_inference_videos_per_sample": 1,
    "seed": 0,
    "fps": None,
    "output": "stepvideo.mp4",
}

EXTRACT: dict[str, Any] = {"output_dir": None, "shard_size": 64, "batch_size": 1, "layout": "mm"}

# Values model.json keys must have: mm implements exactly these components.
FIXED = {
    "ae.model_id": "stepvideovae",
    "ae.frame_len": 17,
    "ae.version": 2,
    "predictor.model_id": "stepvideodit",
    "diffusion.model_id": "flow_match_discrete_scheduler",
    "diffusion.reverse": False,
    "diffusion.solver": "euler",
}

# The model.json predictor keys (MindSpeed-MM's stepvideodit) and the StepVideoModel arguments they set.
PREDICTOR_KEYS = {
    "num_layers": "num_layers",
    "num_heads": "num_attention_heads",
    "head_dim": "attention_head_dim",
    "channel_split": "rope_ch_split",
    "in_channels": "in_channels",
    "out_channels": "out_channels",
    "patch_size": "patch_size",
    "caption_channels": "caption_channels",
}


def dtype_of(name: str | None, flavor: Flavor, key: str) -> torch.dtype:
    """The torch dtype a model.json ``dtype`` names (the flavor's default when None)."""
    return parse_dtype(name or flavor.dtype, key)


def flavor_name(model: Config) -> str:
    """model.flavor; when not given, ``30b`` if the release or an encoder loads from files (MindSpeed-MM's
    model.json names no flavor), else ``tiny``."""
    if model.flavor:
        return model.flavor
    parts = [model.ae, *model_json.text_encoders(model).values()]
    return "30b" if model.from_pretrained or any(part.from_pretrained for part in parts) else "tiny"


def text_encoder(model: Config, part: str) -> Config:
    """The ``llm`` or ``clip`` text encoder entry of the model section (its defaults filled in)."""
    return model_json.text_encoders(model)[part]


def check_model(model: Config) -> Flavor:
    """Check the model section beyond its schema; returns its flavor."""
    flavor = get_flavor(flavor_name(model))
    if model.task not in TASKS:
        raise ConfigError(f"model.task must be one of {', '.join(TASKS)}, got {model.task!r}")
    sections.check_fixed(model, FIXED, "mm's stepvideo implements only that")
    model_json.check(model)
    for key in ("ae.dtype", "predictor.dtype"):
        dtype_of(model.get_path(key), flavor, f"model.{key}")
    for part in model_json.TEXT_ENCODER_PARTS:
        dtype_of(text_encoder(model, part).dtype, flavor, f"model.text_encoder.{part}.dtype")
    return flavor


def predictor_arguments(model: Config, flavor: Flavor) -> dict[str, Any]:
    """The StepVideoModel arguments of the flavor, the model.json predictor keys and the task."""
    out = dict(flavor.predictor)
    out.update({PREDICTOR_KEYS[k]: v for k, v in model.predictor.items() if k in PREDICTOR_KEYS and v is not None})
    if model_json.patch_size(model) is not None:
        out["patch_size"] = model_json.patch_size(model)
    out["use_additional_conditions"] = model.task == "i2v"
    heads, head_dim = out["num_attention_heads"], out["attention_head_dim"]
    split = out.get("rope_ch_split")
    if split is not None and (sum(split) != head_dim or any(n % 2 for n in split)):
        raise ConfigError(f"model.predictor.channel_split {list(split)} must be even widths adding up to "
                          f"head_dim {head_dim}")
    if heads < 1 or head_dim % 4:
        raise ConfigError(f"model.predictor.head_dim {head_dim} must be a multiple of 4 (the 3D RoPE split)")
    return out
