"""The Qwen2.5-VL a run trains: a Hugging Face (or MindSpeed-MM) checkpoint, a model.json's architecture, or tiny."""

from __future__ import annotations

import logging

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from mm_core.config import Config
from mm_models_vlm.qwen2_5_vl import model_json
from mm_models_vlm.qwen2_5_vl.attention import load_implementation, use_attention
from mm_models_vlm.qwen2_5_vl.data import model_config, model_dir
from mm_models_vlm.qwen2_5_vl.model import load_model

log = logging.getLogger("mm")


def build_model(config: Config, is_main: bool = True) -> Qwen2_5_VLForConditionalGeneration:
    """The model the config names: ``model.from_pretrained`` (checked against the architecture keys of a
    MindSpeed-MM model.json), else the model.json's architecture with random weights (said in a warning), else the
    generated tiny model."""
    attn = config.model.attn_implementation
    architecture = model_config(config)
    if config.model.from_pretrained or not model_json.given(config.model):
        return load_model(model_dir(config), attn)
    model = Qwen2_5_VLForConditionalGeneration._from_config(
        architecture, dtype=torch.float32, attn_implementation=load_implementation(attn))
    if is_main:
        count = sum(p.numel() for p in model.parameters())
        log.warning("warning: qwen2_5_vl: the model.json architecture (%.2fB parameters) starts from random weights; "
                    "give --load DIR or model.from_pretrained (a Hugging Face folder) to start from trained ones",
                    count / 1e9)
    return use_attention(model, attn)
