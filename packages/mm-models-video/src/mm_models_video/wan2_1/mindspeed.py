"""MindSpeed-MM's Wan2.1 files: the keys mm reads elsewhere or not at all, its module paths, its tiling and flavor.

MindSpeed-MM's pretrain, inference and feature-extraction model.json files load unchanged into the model section:
the keys mm reads are in schema.MODEL, the others are :class:`Unused` (one warning line per reason). The inference
file's run keys (``prompt``, ``image``, ``video``, ``start_frame``, ``num_frames``, ``strength``, ``save_path``,
``fps``, ``frame_interval``, ``pipeline_config.input_size``, the UniPC ``diffusion`` keys) feed ``mm infer`` where
the inference section leaves them at their defaults, and so does WanPipeline's default negative prompt.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKLWan, UniPCMultistepScheduler

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
    "fp32_calculate": Unused("diffusers' WanTransformer3DModel keeps its norms, time embedder and modulation in "
                             "float32 (its _keep_in_fp32_modules)"),
}
# MindSpeed-MM's predictor.model_type and the model.task it runs as: FLF2V is the I2V model with a second image.
MODEL_TYPE_TASKS = {"t2v": "t2v", "i2v": "i2v", "flf2v": "i2v"}
TOP_UNUSED: dict[str, Any] = {
    "patch": Unused("MindSpeed-MM's runtime patches of its own modules"),
    "dpo": Unused("wan2_1 alone trains flow matching; stack --plugin video_dpo to train DPO with these keys"),
    "pipeline_class": Unused("mm infer runs WanPipeline (t2v), WanVideoToVideoPipeline (t2v with a video) or "
                             "WanImageToVideoPipeline (i2v, flf2v) from model.task and its inputs"),
    "use_prompt_preprocess": Unused("mm infer encodes the prompts as given"),
    "dtype": Unused("each part's dtype (model.predictor.dtype ...) sets its dtype"),
    "device": Unused("mm infer runs on the device its runtime gives (CUDA when present)"),
}
# The inference model.json's run keys, read by inference_values where the inference section keeps its defaults.
INFERENCE_KEYS: dict[str, Any] = {
    "prompt": None,
    "image": None,
    "dual_image": None,  # image lines are "first, last" pairs (FLF2V)
    "video": None,  # v2v: the source clips, num_frames of them from start_frame, noised to strength
    "start_frame": None,
    "num_frames": None,
    "strength": None,
    "save_path": None,
    "fps": None,
    "frame_interval": None,  # the written fps is fps // frame_interval
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

# The negative prompts MindSpeed-MM's WanPipeline.get_negative_prompt gives Wan2.1 when its run names none (its
# inference files never do): one for T2V and I2V, FLF2V's with two more terms.
NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall "
    "gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, "
    "poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background, three "
    "legs, many people in the background, walking backwards"
)
FLF2V_NEGATIVE_PROMPT = "Lens switching, lens shaking, b" + NEGATIVE_PROMPT[1:]

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
    """The inference section with what a MindSpeed-MM inference model.json gives (prompt, image, video,
    start_frame, num_frames, strength, save_path, fps // frame_interval, input_size, num_inference_steps,
    guidance_scale, flow_shift, and WanPipeline's default negative prompt) where the section keeps its defaults."""
    inf = Config(config.inference)
    model = config.model
    diffusion = model.diffusion
    frames_hw = model.pipeline_config.input_size
    if frames_hw is not None and (not isinstance(frames_hw, list) or len(frames_hw) != 3):
        raise ConfigError(f"model.pipeline_config.input_size must be [frames, height, width], got {frames_hw!r}")
    interval = model.frame_interval
    if interval is not None and (not isinstance(interval, int) or interval < 1 or model.fps is None):
        raise ConfigError(f"model.frame_interval divides model.fps (the written fps, as MindSpeed-MM saves): it must "
                          f"be a positive integer with model.fps given, got {interval!r} with fps {model.fps!r}")
    given = {
        "prompt": model.prompt,
        "image": model.image,
        "video": model.video,
        "start_frame": model.start_frame,
        "strength": model.strength,
        "fps": model.fps // (interval or 1) if model.fps is not None else None,
        "steps": diffusion.num_inference_steps,
        "guidance_scale": diffusion.guidance_scale,
        "flow_shift": diffusion.flow_shift,
        "negative_prompt": mindspeed_negative_prompt(model.predictor.model_type) if is_inference_file(config) else None,
        **(dict(zip(("num_frames", "height", "width"), frames_hw)) if frames_hw else {}),
    }
    if model.num_frames is not None:
        given["num_frames"] = model.num_frames  # v2v's source frames: also the frames it generates
    if model.save_path is not None:
        given["output"] = str(Path(model.save_path) / Path(inf.output).name)
    for key, value in given.items():
        if value is not None and config.source_of(f"inference.{key}") is None:
            inf[key] = value
    return inf


def is_inference_file(config: Config) -> bool:
    """Whether the model section is a MindSpeed-MM inference model.json (it names its ``pipeline_class``)."""
    return config.source_of("model.pipeline_class") is not None


def mindspeed_negative_prompt(model_type: str | None) -> str:
    """MindSpeed-MM's default negative prompt for a Wan2.1 ``predictor.model_type``."""
    return FLF2V_NEGATIVE_PROMPT if model_type == "flf2v" else NEGATIVE_PROMPT


def unipc_scheduler(diffusion: Mapping[str, Any], num_train_timesteps: int) -> UniPCMultistepScheduler | None:
    """The UniPC sampler an inference model.json's diffusion section describes (None for the training scheduler)."""
    if diffusion["model_id"] != UNIPC:
        return None
    arguments = {k: diffusion[k] for k in UNIPC_ARGUMENTS if diffusion.get(k) is not None}
    return UniPCMultistepScheduler(num_train_timesteps=diffusion.get("num_train_steps") or num_train_timesteps,
                                   **arguments)


def task_from_model_type(config: Config) -> None:
    """Give model.task the task of MindSpeed-MM's ``predictor.model_type`` where the model section leaves it unset
    (MindSpeed-MM's inference files name only the latter)."""
    model_type = config.model.predictor.model_type
    if model_type is None or config.source_of("model.task") is not None:
        return
    if model_type not in MODEL_TYPE_TASKS:
        raise ConfigError(f"model.predictor.model_type {model_type!r} is not a Wan2.1 model type (known: "
                          f"{', '.join(MODEL_TYPE_TASKS)})")
    config.model["task"] = MODEL_TYPE_TASKS[model_type]


def condition_tiling(ae: Config, vae: AutoencoderKLWan) -> bool | None:
    """Whether the VAE tiles the I2V first-frame encode (``ae.i2v_processor.i2v_vae_encode_tiling``): True, False,
    or None for MindSpeed-MM's "auto" (as the clips are encoded). Forced on, it tiles with ``ae.tiling_param``'s
    sizes (given to the VAE here when ``ae.enable_tiling`` is off)."""
    value = ae.i2v_processor.i2v_vae_encode_tiling
    if value in (None, "auto"):
        return None
    if not isinstance(value, bool):
        raise ConfigError(f"model.ae.i2v_processor.i2v_vae_encode_tiling must be true, false or 'auto', got {value!r}")
    if value and not vae.use_tiling:
        vae.enable_tiling(**{k: v for k, v in ae.tiling_param.items() if v is not None})
        vae.disable_tiling()
    return value


@contextmanager
def vae_tiling(vae: AutoencoderKLWan, use: bool | None) -> Iterator[None]:
    """Within the block the VAE tiles (True) or not (False); None leaves it as it is."""
    before = vae.use_tiling
    if use is not None:
        vae.use_tiling = use
    try:
        yield
    finally:
        vae.use_tiling = before
