"""The wan2_1 config sections (model.json, data.json, inference, extract) and the checks defaults cannot express."""

from __future__ import annotations

import copy
from typing import Any

import torch

from mm_core.config import Config
from mm_core.dtypes import parse_dtype
from mm_models_video import clip_shape, sections
from mm_models_video.wan2_1.flavors import Flavor, get_flavor
from mm_models_video.wan2_1.model import WanT2V

MODEL: dict[str, Any] = {
    "flavor": "tiny",
    "from_pretrained": None,
    "task": "t2v",
    "ae": copy.deepcopy(sections.AE),
    "text_encoder": copy.deepcopy(sections.TEXT_ENCODER),
    "tokenizer": {"autotokenizer_name": "AutoTokenizer", "hub_backend": "hf", "from_pretrained": None},
    "predictor": {
        "model_id": "wandit",
        "from_pretrained": None,
        "dtype": None,
        "model_type": "t2v",
        "patch_size": None,
        "text_len": None,
        "in_dim": None,
        "hidden_size": None,
        "ffn_dim": None,
        "freq_dim": None,
        "text_dim": None,
        "img_dim": None,
        "out_dim": None,
        "num_heads": None,
        "num_layers": None,
        "qk_norm": None,
        "qk_norm_type": None,
        "cross_attn_norm": None,
        "eps": None,
        "max_seq_len": None,
    },
    "diffusion": copy.deepcopy(sections.DIFFUSION),
}

# data.json's blocks are validated by mm_data.formats (the seeds' keys); an empty dataset_param.data_path
# means the generated moving-shapes dataset.
DATA: dict[str, Any] = {"dataset_param": {}, "dataloader_param": {}, "on_bad_sample": "skip"}

INFERENCE: dict[str, Any] = {
    "checkpoint": None,
    "prompt": "a red circle moving right on a blue background",
    "negative_prompt": "",
    "num_frames": None,
    "height": None,
    "width": None,
    "steps": 50,
    "guidance_scale": 5.0,
    "seed": 0,
    "fps": None,
    "output": "wan2_1.mp4",
}

EXTRACT: dict[str, Any] = {"output_dir": None, "shard_size": 64, "batch_size": 1}

# Values model.json keys must have: mm implements exactly these components.
FIXED = {
    "task": "t2v",
    **sections.FIXED,
    "tokenizer.autotokenizer_name": "AutoTokenizer",
    "tokenizer.hub_backend": "hf",
    "predictor.model_id": "wandit",
    "predictor.model_type": "t2v",
}


def dtype_of(name: str | None, flavor: Flavor, key: str) -> torch.dtype:
    """The torch dtype a model.json ``dtype`` names (the flavor's default when None)."""
    return parse_dtype(name or flavor.dtype, key)


def check_model(model: Config) -> Flavor:
    """Check the model section beyond its schema; returns its flavor."""
    flavor = get_flavor(model.flavor)
    sections.check_fixed(model, FIXED, "mm's wan2_1 implements only that")
    for part in ("ae", "text_encoder", "predictor"):
        dtype_of(model[part].dtype, flavor, f"model.{part}.dtype")
    return flavor


def check_clip(model: WanT2V, flavor: str, num_frames: int, height: int, width: int, where: str) -> None:
    """A ConfigError naming ``where`` unless the clip shape fits the built model's VAE strides × patch size."""
    factors = clip_shape.clip_factors(model.vae_strides, model.predictor.config.patch_size)
    why = f"for Wan2.1 {flavor} (VAE stride × patch size)"
    clip_shape.check_clip(num_frames, height, width, factors, where, why)
