"""The opensoraplan1_3 config sections (MindSpeed-MM's model.json and data.json keys, inference) and their checks."""

from __future__ import annotations

from typing import Any

import torch

from mm_core.config import Config
from mm_core.dtypes import parse_dtype
from mm_core.errors import ConfigError
from mm_models_video import sections
from mm_models_video.opensoraplan1_3 import mindspeed
from mm_models_video.opensoraplan1_3.flavors import Flavor, model_flavor

TASKS = ("t2v", "i2v")

# The seeds' pretrain_t2v_model.json; None means "the flavor's value". The flavor: tiny, or 2b when the model.json
# gives the predictor's architecture (flavors.flavor_name).
MODEL: dict[str, Any] = {
    "flavor": None,
    "task": "t2v",
    "from_pretrained": None,
    "load_video_features": mindspeed.FEATURES,
    "load_text_features": mindspeed.FEATURES,
    "enable_encoder_dp": False,
    "encoder_offload_interval": 1,
    "predictor": {
        "model_id": None,
        "from_pretrained": None,
        "dtype": None,
        "num_layers": None,
        "num_heads": None,
        "head_dim": None,
        "in_channels": None,
        "out_channels": None,
        "dropout": None,
        "cross_attention_dim": None,
        "attention_q_bias": None,
        "attention_k_bias": None,
        "attention_v_bias": None,
        "patch_size_thw": None,
        "activation_fn": None,
        "norm_elementwise_affine": None,
        "norm_eps": None,
        "caption_channels": None,
        "interpolation_scale": None,
        "pipeline_num_layers": None,
        "sparse1d": None,
        "sparse_n": None,
        "vae_scale_factor_t": None,
        **mindspeed.MODEL_UNUSED["predictor"],
    },
    "diffusion": {
        "model_id": "DDPM",
        "num_train_steps": 1000,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "snr_gamma": 5.0,
        "t_sample_method": "explicit_uniform",
        **mindspeed.DIFFUSION_KEYS,
        **mindspeed.MODEL_UNUSED["diffusion"],
    },
    "text_encoder": {
        "model_id": "MT5",
        "hub_backend": "hf",
        "from_pretrained": None,
        "dtype": None,
        **mindspeed.MODEL_UNUSED["text_encoder"],
    },
    "tokenizer": {
        "hub_backend": "hf",
        "autotokenizer_name": "AutoTokenizer",
        "from_pretrained": None,
        "model_max_length": None,
    },
    "ae": {
        "model_id": "wfvae",
        "from_pretrained": None,
        "dtype": None,
        "base_channels": None,
        "decoder_energy_flow_hidden_size": None,
        "decoder_num_resblocks": None,
        "dropout": None,
        "encoder_energy_flow_hidden_size": None,
        "encoder_num_resblocks": None,
        "latent_dim": None,
        "use_attention": None,
        "norm_type": None,
        "t_interpolation": None,
        "use_tiling": False,
        "connect_res_layer_num": None,
        "vae_cp_size": 1,
        "vae_scale_factor": None,
        "scale": None,
        "shift": None,
        "do_sample": None,
        "i2v_processor": {"processor_id": "opensoraplan_i2v_processor", "vae_scale_factor": None},
        **mindspeed.MODEL_UNUSED["ae"],
    },
    "patch": {"ae_float32": True},
    "use_dynamic_dpcp": False,
    "max_cp_size": None,
    **mindspeed.INFERENCE_KEYS,
    **mindspeed.TOP_UNUSED,
}

# data.json's keys (mindspeed.DATA; the data module checks their values); an empty data_path means generated clips.
DATA: dict[str, Any] = mindspeed.DATA

# mm extract: where the features go, the shard size of mm's layout, and the layout (mm or mindspeed).
EXTRACT: dict[str, Any] = {"output_dir": None, "shard_size": 64, "batch_size": 1, "layout": "mm"}

# v1.3's sampler: Euler ancestral, v-prediction, 100 steps, CFG 7.5, its prompt template and negative prompt.
POSITIVE_TEMPLATE = "\n    high quality, high aesthetic, {}\n    "
NEGATIVE_PROMPT = (
    "\n    nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, \n    low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry.\n    "
)
INFERENCE: dict[str, Any] = {
    "checkpoint": None,
    "prompt": "a red circle moving right on a blue background",
    "negative_prompt": NEGATIVE_PROMPT,
    "prompt_template": POSITIVE_TEMPLATE,
    "image": None,
    "conditional_pixel_values_path": None,
    "num_frames": None,
    "height": None,
    "width": None,
    "steps": 100,
    "guidance_scale": 7.5,
    "seed": 0,
    "fps": None,
    "output": "opensoraplan1_3.mp4",
}

# Values model.json keys must have: mm implements exactly these components.
FIXED = {
    "text_encoder.model_id": "MT5",
    "text_encoder.hub_backend": "hf",
    "tokenizer.hub_backend": "hf",
    "tokenizer.autotokenizer_name": "AutoTokenizer",
    "ae.model_id": "wfvae",
    "ae.i2v_processor.processor_id": "opensoraplan_i2v_processor",
}
# DDPM (training's noising) or the sampler of MindSpeed-MM's inference model.json.
DIFFUSION_IDS = ("DDPM", "EulerAncestralDiscrete")
# MindSpeed-MM's use_dynamic_dpcp regroups the ranks into another DP × CP split each step (by the step's longest
# clip, up to max_cp_size); mm's device mesh, FSDP2 shards and gradient groups are fixed for the run.
DYNAMIC_DPCP = ("model.use_dynamic_dpcp: mm does not switch the DP × CP split per step (its device mesh is fixed "
                "for the run); set parallel.cp.size to model.max_cp_size (parallel.cp.mode=ulysses, as dynamic DPCP "
                "needs) so the longest clip fits, every step then splits its clips over that many ranks")
# MindSpeed-MM's predictor of each task.
PREDICTOR_IDS = {"t2v": "videoditsparse", "i2v": "videoditsparsei2v"}

# model.json predictor keys -> OpenSoraT2V arguments (the list-valued ones are translated in predictor_overrides).
PREDICTOR_KEYS = {
    "num_layers": "num_layers",
    "num_heads": "num_attention_heads",
    "head_dim": "attention_head_dim",
    "in_channels": "in_channels",
    "out_channels": "out_channels",
    "dropout": "dropout",
    "cross_attention_dim": "cross_attention_dim",
    "activation_fn": "activation_fn",
    "norm_elementwise_affine": "norm_elementwise_affine",
    "norm_eps": "norm_eps",
    "caption_channels": "caption_channels",
    "sparse1d": "sparse1d",
    "sparse_n": "sparse_n",
}

# model.json ae keys that are WFVAEModel arguments.
AE_KEYS = (
    "latent_dim", "base_channels", "encoder_num_resblocks", "encoder_energy_flow_hidden_size",
    "decoder_num_resblocks", "decoder_energy_flow_hidden_size", "use_attention", "dropout", "norm_type",
    "t_interpolation", "connect_res_layer_num", "scale", "shift",
)


def dtype_of(name: str | None, flavor: Flavor, key: str) -> torch.dtype:
    """The torch dtype a model.json ``dtype`` names (the flavor's default when None)."""
    return parse_dtype(name or flavor.dtype, key)


def predictor_overrides(predictor: Config) -> dict[str, Any]:
    """The OpenSoraT2V arguments the model.json predictor keys set."""
    out = {PREDICTOR_KEYS[k]: v for k, v in predictor.items() if k in PREDICTOR_KEYS and v is not None}
    biases = {predictor[k] for k in ("attention_q_bias", "attention_k_bias", "attention_v_bias")} - {None}
    if len(biases) > 1:
        raise ConfigError("model.predictor.attention_q_bias, _k_bias and _v_bias must be equal (one attention_bias)")
    if biases:
        out["attention_bias"] = biases.pop()
    if predictor.patch_size_thw is not None:
        t, h, w = _triple(predictor.patch_size_thw, "model.predictor.patch_size_thw")
        if t != 1 or h != w:
            raise ConfigError(f"model.predictor.patch_size_thw must be [1, p, p] (per-frame patches), got {[t, h, w]}")
        out["patch_size_t"], out["patch_size"] = int(t), int(h)
    if predictor.interpolation_scale is not None:
        t, h, w = _triple(predictor.interpolation_scale, "model.predictor.interpolation_scale")
        out.update(interpolation_scale_t=float(t), interpolation_scale_h=float(h), interpolation_scale_w=float(w))
    return out


def _triple(value: Any, key: str) -> list:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ConfigError(f"{key} must be a list of 3 numbers [t, h, w], got {value!r}")
    return list(value)


def check_model(model: Config) -> Flavor:
    """Check the model section beyond its schema; returns its flavor."""
    flavor = model_flavor(model)
    if model.task not in TASKS:
        raise ConfigError(f"model.task must be one of {', '.join(TASKS)}, got {model.task!r}")
    sections.check_fixed(model, FIXED, "mm's opensoraplan1_3 implements only that")
    if model.use_dynamic_dpcp:
        raise ConfigError(DYNAMIC_DPCP)
    if model.diffusion.model_id not in DIFFUSION_IDS:
        raise ConfigError(f"model.diffusion.model_id must be one of {', '.join(DIFFUSION_IDS)} (DDPM noises for "
                          f"training, mm infer samples with Euler ancestral), got {model.diffusion.model_id!r}")
    for key in ("pipeline_config.model_type", "mask_type"):
        if model.get_path(key) not in (None, model.task):
            raise ConfigError(f"model.{key} {model.get_path(key)!r} needs model.task={model.get_path(key)} "
                              f"(model.task is {model.task!r})")
    expected = PREDICTOR_IDS[model.task]
    if model.predictor.model_id not in (None, expected):
        raise ConfigError(
            f"model.predictor.model_id must be {expected!r} for model.task {model.task!r}, "
            f"got {model.predictor.model_id!r}"
        )
    for key in ("ae.vae_scale_factor", "ae.i2v_processor.vae_scale_factor"):
        if model.get_path(key) not in (None, [4, 8, 8]):
            raise ConfigError(f"model.{key} must be [4, 8, 8] (WF-VAE's compression), got {model.get_path(key)!r}")
    for part in ("ae", "text_encoder", "predictor"):
        dtype_of(model[part].dtype, flavor, f"model.{part}.dtype")
    head_dim = model.predictor.head_dim or flavor.predictor["attention_head_dim"]
    if head_dim % 6:
        raise ConfigError(
            f"model.predictor.head_dim {head_dim} must be divisible by 6 (3D RoPE: an even third per axis)"
        )
    return flavor
