"""MindSpeed-MM's OpenSoraPlan 1.3 files: the keys mm has no use for, its module paths, and the architecture check.

MindSpeed-MM's pretrain_t2v_model.json / pretrain_i2v_model.json and data_*.json load unchanged: the keys mm reads
are in schema.MODEL and DATA_KEYS, the others are :class:`Unused` (one warning line per reason). A model.json's
predictor keys build the transformer, or are checked against the config.json of the folder it loads from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mm_core.config import Config, Unused, wrap
from mm_core.errors import ConfigError

FEATURES = Unused("data.dataset_param.dataset_type 'feature' says whether features are loaded")
# model.json keys mm accepts and does not read, by section (merged into schema.MODEL).
MODEL_UNUSED: dict[str, dict[str, Unused]] = {
    "predictor": {"fa_layout": Unused("the tensor layout of Ascend's flash attention; torch's SDPA runs")},
    "diffusion": {
        "timestep_spacing": Unused("noising draws every training timestep; mm infer's sampler spaces its steps "
                                   "trailing with zero terminal SNR, as v1.3's does"),
        "device": Unused("the schedule runs on the model's device"),
    },
    "text_encoder": {"low_cpu_mem_usage": Unused("transformers loads the encoder its own way")},
    "ae": {"output_dtype": Unused("the latents are normalized in float32 before the predictor takes them")},
}
_IMAGE = Unused("mm infer resizes and center-crops the image to the inference height × width")
TOP_UNUSED = {
    "max_seq_size": Unused("a bound of use_dynamic_dpcp, which mm's opensoraplan1_3 does not implement"),
    "frame_interval": Unused("mm infer writes every generated frame"),
    "use_prompt_preprocess": Unused("mm infer formats the prompt with inference.prompt_template"),
    "pipeline_class": Unused("mm infer runs its own OpenSoraPlan 1.3 sampler (Euler ancestral, v-prediction)"),
    "device": Unused("mm picks the device"),
    "dtype": Unused("model.predictor.dtype sets the sampling dtype"),
    "crop_for_hw": _IMAGE,
    "max_hxw": _IMAGE,
    "eval_config": Unused("mm has no VBench evaluation; mm infer generates the videos"),
}
# The inference model.json's keys mm infer reads (None: not given), and the diffusion keys it adds.
INFERENCE_KEYS: dict[str, Any] = {
    "pipeline_config": {"version": None, "input_size": None, "model_type": None,
                        "use_attention_mask": Unused("mm infer always masks the prompt's padding")},
    "save_path": None,
    "fps": None,
    "prompt": None,
    "conditional_pixel_values_path": None,
    "mask_type": None,
}
DIFFUSION_KEYS = {"num_inference_steps": None, "guidance_scale": None}
# model.json dotted key -> inference key, for mm infer (an inference key the user sets wins).
TO_INFERENCE = {
    "diffusion.num_inference_steps": "steps",
    "diffusion.guidance_scale": "guidance_scale",
    "fps": "fps",
    "prompt": "prompt",
    "conditional_pixel_values_path": "conditional_pixel_values_path",
}

_DECODE = Unused("mm decodes with decord (PyAV when missing) and plans every clip itself")
_TRANSFORMS = Unused("mm's clip planner resizes to max_hxw (or max_height × max_width), crops to hw_stride and "
                     "normalizes to [-1, 1], as these transforms do")
# data.json dataset_param keys, at its top or under basic_parameters / preprocess_parameters; None: not given.
DATASET_KEYS: dict[str, Any] = {
    **dict.fromkeys((
        "dataset_type", "data_path", "json_path", "data_folder", "num_frames", "min_num_frames", "max_height",
        "max_width", "max_hxw", "min_hxw", "train_fps", "speed_factor", "drop_short_ratio", "cfg", "hw_stride",
        "force_resolution", "hw_aspect_thr", "use_aesthetic", "vae_scale_factor", "use_text_processer",
        "enable_text_preprocessing", "tokenizer_config", "mask_type_ratio_dict_video", "model_max_length",
        "frame_interval", "auto_interval", "skip_frame_num",
    )),
    "data_storage_mode": Unused("data_path is read as data.txt lines (root,annotation.json) or one annotation file"),
    "video_processor_type": _DECODE,
    "video_reader_type": _DECODE,
    "image_reader_type": _DECODE,
    "train_pipeline": _TRANSFORMS,
    "train_pipeline_after_resize": _TRANSFORMS,
    "seed": Unused("training.seed (--seed) seeds the data's draws"),
    "text_preprocess_methods": Unused("captions are cleaned as MindSpeed-MM's TextProcesser does by default"),
}
DATA: dict[str, Any] = {
    "dataset_param": {**DATASET_KEYS, "basic_parameters": dict(DATASET_KEYS),
                      "preprocess_parameters": dict(DATASET_KEYS)},
    "dataloader_param": {
        **dict.fromkeys((
            "batch_size", "num_workers", "shuffle", "drop_last", "pin_memory", "prefetch_factor",
            "persistent_workers", "group_frame", "group_resolution", "group_data",
        )),
        "dataloader_mode": Unused("mm's resumable sampler feeds the loader"),
        "sampler_type": Unused("mm's resumable sampler groups clips of one shape (group_data) as "
                               "LengthGroupedSampler does"),
        "seed": Unused("training.seed (--seed) seeds the sampler"),
        "initial_global_step_for_sampler": Unused("mm's sampler resumes from the run's checkpoint"),
        "collate_param": Unused("mm's collate pads clips of different shapes and gives their mask"),
        "split_batch": Unused("each micro-batch holds clips of one shape or is padded, never split"),
    },
    "on_bad_sample": "skip",
}

# MindSpeed-MM's module paths (fsdp2 and recompute patterns) -> mm's OpenSoraPlanT2V / OpenSoraPlanI2V.
MINDSPEED_MODULES = {
    "predictor.videodit_sparse_blocks": "predictor.transformer_blocks",
    "predictor.videodit_blocks": "predictor.transformer_blocks",
}

# OpenSoraT2V arguments -> the model.json predictor key that sets them (schema.predictor_overrides).
ARGUMENT_KEYS = {
    "num_attention_heads": "num_heads",
    "attention_head_dim": "head_dim",
    "attention_bias": "attention_q_bias",
    "patch_size_t": "patch_size_thw",
    "patch_size": "patch_size_thw",
    "interpolation_scale_t": "interpolation_scale",
    "interpolation_scale_h": "interpolation_scale",
    "interpolation_scale_w": "interpolation_scale",
}


def check_predictor(overrides: Mapping[str, Any], loaded: Mapping[str, Any], model: Mapping[str, Any],
                    where: str) -> None:
    """Each architecture value the model.json gives (``overrides``, OpenSoraT2V arguments) equals the loaded
    predictor's config (``loaded``); else one ConfigError naming the model.json keys."""
    wrong = []
    for argument, value in overrides.items():
        if argument not in loaded or loaded[argument] == value:
            continue
        key = ARGUMENT_KEYS.get(argument, argument)
        entry = f"model.predictor.{key} is {model[key]!r}, {where} has {argument} {loaded[argument]!r}"
        if entry not in wrong:
            wrong.append(entry)
    if wrong:
        raise ConfigError(f"the model section does not describe the predictor it loads: {'; '.join(wrong)}")


def inference_model(config: Config) -> Config:
    """The model section, its ``task`` from an inference model.json's ``pipeline_config.model_type`` when
    model.task is not set (as MindSpeed-MM's inference script runs the i2v file)."""
    named = config.model.get_path("pipeline_config.model_type")
    if named is None or config.source_of("model.task") is not None:
        return config.model
    return wrap({**config.model, "task": named})


def inference_section(config: Config) -> Config:
    """The inference section with what an inference model.json gives (its prompt file, steps, CFG, fps,
    ``pipeline_config.input_size`` and ``save_path``) where the inference section's own key was not set."""
    model, values = config.model, dict(config.inference)

    def unset(key: str) -> bool:
        return config.source_of(f"inference.{key}") is None

    for dotted, key in TO_INFERENCE.items():
        if model.get_path(dotted) is not None and unset(key):
            values[key] = model.get_path(dotted)
    size = model.get_path("pipeline_config.input_size")
    if size is not None:
        if not isinstance(size, (list, tuple)) or len(size) != 3:
            raise ConfigError(f"model.pipeline_config.input_size must be [frames, height, width], got {size!r}")
        for key, value in zip(("num_frames", "height", "width"), size):
            if unset(key):
                values[key] = int(value)
    if model.get("save_path") and unset("output"):
        values["output"] = str(Path(model.save_path) / Path(values["output"]).name)
    return wrap(values)
