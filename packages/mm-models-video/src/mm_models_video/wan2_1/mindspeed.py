"""MindSpeed-MM's Wan2.1 files: the keys mm reads elsewhere or not at all, its module paths, its tiling and flavor.

MindSpeed-MM's pretrain, inference and feature-extraction model.json files load unchanged into the model section:
the keys mm reads are in schema.MODEL, the others are :class:`Unused` (one warning line per reason). The inference
file's run keys (``prompt``, ``save_path``, ``fps``, ``pipeline_config.input_size``, the UniPC ``diffusion``
keys) feed ``mm infer`` where the inference section leaves them at their defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffusers import UniPCMultistepScheduler

from mm_core.config import Config, Unused
from mm_core.errors import ConfigError
from mm_models_video.wan2_1.flavors import FLAVORS

_KERNEL = Unused("Ascend kernel switches; torch's kernels run")
PREDICTOR_UNUSED: dict[str, Unused] = {
    "attention_async_offload": _KERNEL,
    "use_fused_rmsnorm": _KERNEL,
    "FPDT": Unused("Ascend's FPDT sequence chunking; long sequences split with --context-parallel-size"),
    "FPDT_chunk_number": Unused("Ascend's FPDT sequence chunking; long sequences split with --context-parallel-size"),
    "FPDT_with_offload": Unused("Ascend's FPDT sequence chunking; long sequences split with --context-parallel-size"),
}
TOP_UNUSED: dict[str, Any] = {
    "patch": Unused("MindSpeed-MM's runtime patches of its own modules"),
    "dpo": Unused("wan2_1 alone trains flow matching; stack --plugin video_dpo to train DPO with these keys"),
    "pipeline_class": Unused("mm infer runs WanPipeline (t2v) or WanImageToVideoPipeline (i2v) from model.task"),
    "use_prompt_preprocess": Unused("mm infer encodes the prompts as given"),
    "dtype": Unused("each part's dtype (model.predictor.dtype ...) sets its dtype"),
    "device": Unused("mm infer runs on the device its runtime gives (CUDA when present)"),
    "frame_interval": Unused("mm infer writes every generated frame"),
}
# The inference model.json's run keys, read by inference_values where the inference section keeps its defaults.
INFERENCE_KEYS: dict[str, Any] = {
    "prompt": None,
    "image": None,
    "save_path": None,
    "fps": None,
    "pipeline_config": {
        "input_size": None,
        "cpu_offload": Unused("mm infer keeps the model on its device"),
    },
}
# The inference model.json's diffusion keys: UniPC's arguments (diffusers' names; sigma_min is the training
# schedule's key) and the sampling run's.
UNIPC_ARGUMENTS = tuple(name for name in inspect.signature(UniPCMultistepScheduler.__init__).parameters
                        if name not in ("self", "num_train_timesteps", "sigma_min"))
DIFFUSION_KEYS: dict[str, Any] = {
    **dict.fromkeys(UNIPC_ARGUMENTS),
    "num_train_steps": None,
    "num_inference_steps": None,
    "guidance_scale": None,
}
UNIPC = "UniPCMultistepScheduler"

# MindSpeed-MM's wandit module paths (fsdp2 and recompute patterns) -> diffusers' WanTransformer3DModel in WanT2V.
MINDSPEED_MODULES = {
    "predictor.head.head": "predictor.proj_out",
    "predictor.head": "predictor.proj_out",
    "predictor.text_embedding": "predictor.condition_embedder.text_embedder",
    "predictor.time_embedding": "predictor.condition_embedder.time_embedder",
    "predictor.time_projection": "predictor.condition_embedder.time_proj",
    "predictor.img_emb": "predictor.condition_embedder.image_embedder",
}

# Wan2.1's VAE tiles in latent pixels, diffusers' in image pixels: 8 (the VAE's spatial stride) apart.
_SPATIAL_STRIDE = 8


def diffusers_tiling(tiling: Mapping[str, Any]) -> dict[str, int]:
    """``AutoencoderKLWan.enable_tiling`` arguments from an ``ae.tiling_param``: diffusers' own keys, or MindSpeed-MM
    Wan2.1's ``tile_size`` / ``tile_stride`` ([height, width] in latent pixels)."""
    out = {k: v for k, v in tiling.items() if k.startswith("tile_sample_") and v is not None}
    for key, names in (("tile_size", ("tile_sample_min_height", "tile_sample_min_width")),
                       ("tile_stride", ("tile_sample_stride_height", "tile_sample_stride_width"))):
        value = tiling.get(key)
        if value is None:
            continue
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
            raise ConfigError(f"model.ae.tiling_param.{key} must be [height, width] in latent pixels, got {value!r}")
        for name, size in zip(names, value):
            if name in out:
                raise ConfigError(f"model.ae.tiling_param gives both {key} and {name}; give one")
            out[name] = size * _SPATIAL_STRIDE
    return out


def inferred_flavor(model: Mapping[str, Any]) -> str:
    """``model.flavor``, or for a MindSpeed-MM model.json (no flavor: the tiny default, with a real model's
    predictor keys) the flavor of the same width (heads × head size), else 1.3b (the UMT5-XXL and Wan VAE it
    needs)."""
    predictor = model["predictor"]
    if model["flavor"] != "tiny" or predictor.get("text_dim") in (None, FLAVORS["tiny"].predictor["text_dim"]):
        return model["flavor"]
    heads, width = predictor.get("num_heads"), predictor.get("hidden_size")
    for name, flavor in FLAVORS.items():
        shape = flavor.predictor
        if heads == shape["num_attention_heads"] and width == heads * shape["attention_head_dim"]:
            return name
    return "1.3b"


def inference_values(config: Config) -> Config:
    """The inference section with what a MindSpeed-MM inference model.json gives (prompt, image, save_path, fps,
    input_size, num_inference_steps, guidance_scale, flow_shift) where the section keeps its defaults."""
    inf = Config(config.inference)
    model = config.model
    diffusion = model.diffusion
    frames_hw = model.pipeline_config.input_size
    if frames_hw is not None and (not isinstance(frames_hw, list) or len(frames_hw) != 3):
        raise ConfigError(f"model.pipeline_config.input_size must be [frames, height, width], got {frames_hw!r}")
    given = {
        "prompt": model.prompt,
        "image": model.image,
        "fps": model.fps,
        "steps": diffusion.num_inference_steps,
        "guidance_scale": diffusion.guidance_scale,
        "flow_shift": diffusion.flow_shift,
        **(dict(zip(("num_frames", "height", "width"), frames_hw)) if frames_hw else {}),
    }
    if model.save_path is not None:
        given["output"] = str(Path(model.save_path) / Path(inf.output).name)
    for key, value in given.items():
        if value is not None and config.source_of(f"inference.{key}") is None:
            inf[key] = value
    return inf


def unipc_scheduler(diffusion: Mapping[str, Any], num_train_timesteps: int) -> UniPCMultistepScheduler | None:
    """The UniPC sampler an inference model.json's diffusion section describes (None for the training scheduler)."""
    if diffusion["model_id"] != UNIPC:
        return None
    arguments = {k: diffusion[k] for k in UNIPC_ARGUMENTS if diffusion.get(k) is not None}
    return UniPCMultistepScheduler(num_train_timesteps=diffusion.get("num_train_steps") or num_train_timesteps,
                                   **arguments)
