"""The qwen2_5_vl config sections: the seeds' model.json and data_3b.json keys with their defaults.

MindSpeed-MM's model.json loads unchanged: its architecture keys (model_json.ARCHITECTURE) build the model or are
checked against the checkpoint's config.json, and its Megatron and Ascend switches are accepted with a warning.
"""

from __future__ import annotations

from typing import Any

from mm_core.config import Unused
from mm_data.mllm_format import DEFAULT_ATTR
from mm_models_vlm.qwen2_5_vl import model_json

MODEL: dict[str, Any] = {
    "flavor": "tiny",  # tiny: a generated tiny model (embedded run, tests); other names need from_pretrained
    "from_pretrained": None,  # a Hugging Face directory (Qwen2.5-VL-3B-Instruct layout)
    # mm_flash_varlen: packed rows attend sample by sample by their cu_seqlens, no mask (varlen_attn on CUDA
    # in bf16/fp16, sdpa per sample elsewhere); sdpa otherwise. Or sdpa | eager | flash_attention_2.
    "attn_implementation": "mm_flash_varlen",
    "model_id": "qwen2_5vl",
    "img_context_token_id": None,
    "video_token_id": None,
    "vision_start_token_id": None,
    # freeze: image_encoder.vision_encoder.freeze (vision tower), image_encoder.vision_projector.freeze
    # (merger), text_decoder.freeze (LLM and lm_head). pipeline_num_layers: image_encoder.vision_encoder.
    # (vit_pp_layers, all on the first stage) and text_decoder. (llm_pp_layers); see docs/pipeline_parallel.md
    "image_encoder": {"vision_encoder": model_json.VISION_ENCODER, "vision_projector": model_json.VISION_PROJECTOR},
    "text_decoder": model_json.TEXT_DECODER,
    "text_encoder": None,
    "video_encoder": None,
    **model_json.TOP,
}

DATA: dict[str, Any] = {
    "dataset_param": {
        "dataset_type": "huggingface",
        "preprocess_parameters": {
            "model_name_or_path": None,  # processor directory; default: model.from_pretrained
            "use_fast_tokenizer": Unused("transformers 5 always loads the fast tokenizer"),
            "split_special_tokens": Unused("special tokens stay whole, as in MindSpeed-MM's default"),
            "image_max_pixels": 262144,
            "image_min_pixels": 0,
            "video_max_pixels": 16384,
            "video_min_pixels": 0,
            "video_fps": 2.0,
            "video_maxlen": 64,
        },
        "basic_parameters": {
            "template": Unused("the processor's chat template formats the turns"),
            "dataset_dir": "./data",
            "dataset": None,  # comma-separated mllm_format files; None: the generated shapes dataset
            "cache_dir": None,  # default: <training.output_dir>/cache
            "train_on_prompt": False,
            "mask_history": False,
            "preprocessing_batch_size": 1000,
            "preprocessing_num_workers": 16,
            "max_samples": None,
            "tool_format": Unused("mm reads plain conversations (no tool calls)"),
            "cutoff_len": 1024,
            "packing": True,  # concatenate a micro-batch into one sequence, no attention across samples
            "neat_packing": None,  # MindSpeed-MM's name for packing without attention across samples
            "preprocess_on_fly": Unused("mm tokenizes the dataset once into its cache"),
            "val_dataset": Unused("qwen2_5_vl trains without a validation split"),
            "overwrite_cache": False,
        },
        "attr": {**DEFAULT_ATTR, "formatting": "sharegpt"},
    },
    "dataloader_param": {
        "dataloader_mode": Unused("mm's resumable sampler feeds the loader"),
        "drop_last": True,
        "sampler_type": Unused("mm's resumable sampler (shuffle, drop_last) replaces it"),
        "collate_param": Unused("mm's collator packs or pads, padding is never trained on"),
        "pin_memory": False,
        "shuffle": True,
        "num_workers": 0,
        "prefetch_factor": None,  # batches each worker loads ahead (torch's default, 2, when null)
        "persistent_workers": False,
        "seed": None,  # default: training.seed
    },
}

# The embedded run: a tiny model on generated shape images, on the CPU in about a minute.
TRAINING: dict[str, Any] = {
    "train_iters": 80,
    "micro_batch_size": 4,
    "global_batch_size": 4,
    "lr": 3.0e-3,
    "lr_warmup_iters": 5,
    "bf16": False,
    "save_interval": 80,
    "keep_last": 1,
}



def defaults() -> dict[str, Any]:
    """The plugin's default_config: model and data sections and the embedded run's training values."""
    return {"model": MODEL, "data": DATA, "training": TRAINING}
