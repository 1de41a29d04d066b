"""The wan2_1 config sections (model.json, data.json, inference, extract) and the checks defaults cannot express."""

from __future__ import annotations

import copy
from typing import Any

import torch

from mm_core.config import Config, Unused
from mm_core.dtypes import parse_dtype
from mm_core.errors import ConfigError
from mm_models_video import clip_shape, sections
from mm_models_video.wan2_1 import mindspeed
from mm_models_video.wan2_1.flavors import Flavor, get_flavor, get_task
from mm_models_video.wan2_1.model import WanT2V

_FEATURES = Unused("data.dataset_param.dataset_type 'feature' says whether features are loaded")

MODEL: dict[str, Any] = {
    "flavor": "tiny",
    "from_pretrained": None,
    "task": "t2v",
    "load_video_features": _FEATURES,
    "load_text_features": _FEATURES,
    "enable_encoder_dp": False,
    "encoder_offload_interval": 1,
    # MindSpeed-MM's feature extraction names the I2V image encoder in ae.i2v_processor.
    "ae": {
        **copy.deepcopy(sections.AE),
        "vae_cp_size": 1,
        # Wan2.1's tiles in latent pixels ([height, width]), as MindSpeed-MM's wan_video_vae takes them
        "tiling_param": {**sections.AE["tiling_param"], "tile_size": None, "tile_stride": None},
        # true / false: tile the first frame's encode (or not) whatever enable_tiling says; "auto" (None): as it says
        "i2v_processor": {"processor_id": "wan_i2v_processor", "image_encoder": None, "i2v_vae_encode_tiling": None},
    },
    "text_encoder": copy.deepcopy(sections.TEXT_ENCODER),
    "tokenizer": {"autotokenizer_name": "AutoTokenizer", "hub_backend": "hf", "from_pretrained": None},
    # I2V only: the CLIP vision tower (diffusers' image_encoder/) and its preprocessing (image_processor/).
    "image_encoder": {"from_pretrained": None, "dtype": None},
    "image_processor": {"from_pretrained": None},
    "predictor": {
        "model_id": "wandit",
        "from_pretrained": None,
        "dtype": None,
        "model_type": None,  # MindSpeed-MM's copy of model.task
        "patch_size": None,
        "text_len": None,
        "in_dim": None,
        "hidden_size": None,
        "ffn_dim": None,
        "freq_dim": None,
        "text_dim": None,
        "img_dim": None,
        "clip_token_len": None,
        "out_dim": None,
        "num_heads": None,
        "num_layers": None,
        "qk_norm": None,
        "qk_norm_type": None,
        "cross_attn_norm": None,
        "eps": None,
        "max_seq_len": None,
        "pipeline_num_layers": None,  # blocks per pipeline stage (parallel.pp.pipeline_num_layers wins)
        **mindspeed.PREDICTOR_UNUSED,
    },
    # training: wan_flow_match_scheduler; an inference model.json's UniPCMultistepScheduler samples in mm infer
    "diffusion": {**copy.deepcopy(sections.DIFFUSION), **mindspeed.DIFFUSION_KEYS},
    **mindspeed.INFERENCE_KEYS,
    **mindspeed.TOP_UNUSED,
}

# data.json's blocks are validated by mm_data.formats (the seeds' keys); an empty dataset_param.data_path
# means the generated moving-shapes dataset.
DATA: dict[str, Any] = {"dataset_param": {}, "dataloader_param": {}, "on_bad_sample": "skip"}

# prompt, image (I2V's first frame; FLF2V's "first, last"), last_image (FLF2V) and video (v2v's source clip, T2V
# models) may name a .txt file of lines; None values take the flavor's and task's defaults.
INFERENCE: dict[str, Any] = {
    "checkpoint": None,
    "prompt": "a red circle moving right on a blue background",
    "negative_prompt": "",  # a MindSpeed-MM inference model.json's run: its WanPipeline default (FLF2V's own)
    "image": None,
    "last_image": None,
    "video": None,
    "start_frame": 0,  # v2v: the source's first frame; num_frames frames are read from it
    "strength": 0.7,  # v2v: the share of the denoising steps run from the noised source (1: all of them)
    "num_frames": None,
    "height": None,
    "width": None,
    "steps": 50,
    "guidance_scale": 5.0,
    "flow_shift": None,
    "num_inference_videos_per_sample": 1,
    "seed": 0,
    "fps": None,
    "output": "wan2_1.mp4",
}

EXTRACT: dict[str, Any] = {"output_dir": None, "shard_size": 64, "batch_size": 1, "layout": "mm"}

# Values model.json keys must have: mm implements exactly these components.
FIXED = {
    **{k: v for k, v in sections.FIXED.items() if k != "diffusion.model_id"},
    "ae.i2v_processor.processor_id": "wan_i2v_processor",
    "tokenizer.autotokenizer_name": "AutoTokenizer",
    "tokenizer.hub_backend": "hf",
    "predictor.model_id": "wandit",
}


def dtype_of(name: str | None, flavor: Flavor, key: str) -> torch.dtype:
    """The torch dtype a model.json ``dtype`` names (the flavor's default when None)."""
    return parse_dtype(name or flavor.dtype, key)


def check_model(model: Config) -> Flavor:
    """Check the model section beyond its schema; returns its flavor."""
    flavor = get_flavor(model.flavor)
    task = get_task(model.task)
    sections.check_fixed(model, FIXED, "mm's wan2_1 implements only that")
    schedulers = (sections.DIFFUSION["model_id"], mindspeed.UNIPC)
    if model.diffusion.model_id not in schedulers:
        raise ConfigError(f"model.diffusion.model_id must be one of {', '.join(map(repr, schedulers))} (training "
                          f"or mm infer's sampler), got {model.diffusion.model_id!r}")
    if mindspeed.MODEL_TYPE_TASKS.get(model.predictor.model_type, model.predictor.model_type) not in (None, task):
        raise ConfigError(f"model.predictor.model_type {model.predictor.model_type!r} differs from model.task {task!r}")
    for part in ("ae", "text_encoder", "image_encoder", "predictor"):
        dtype_of(model[part].dtype, flavor, f"model.{part}.dtype")
    return flavor


def check_clip(model: WanT2V, flavor: str, num_frames: int, height: int, width: int, where: str) -> None:
    """A ConfigError naming ``where`` unless the clip shape fits the built model's VAE strides × patch size."""
    factors = clip_shape.clip_factors(model.vae_strides, model.predictor.config.patch_size)
    why = f"for Wan2.1 {flavor} (VAE stride × patch size)"
    clip_shape.check_clip(num_frames, height, width, factors, where, why)
