"""Load Qwen2.5-VL from a Hugging Face directory and freeze parts of it."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from mm_core.config import Config
from mm_core.errors import ConfigError, reason
from mm_models_vlm.qwen2_5_vl.attention import NAME, load_implementation, use_attention


def load_model(path: str | Path, attn_implementation: str = NAME) -> Qwen2_5_VLForConditionalGeneration:
    """``from_pretrained`` in float32 on the CPU (engines cast and place it); one-line error on a bad directory."""
    implementation = load_implementation(attn_implementation)
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"model.from_pretrained {path} is not a Hugging Face directory (no config.json)")
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(path), dtype=torch.float32, attn_implementation=implementation
        )
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"cannot load Qwen2.5-VL from {path}: {reason(exc)}") from None
    return use_attention(model, attn_implementation)


def _freeze_flag(model_cfg: Config, dotted: str) -> bool:
    node = model_cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None:
        return False
    if not isinstance(node, bool):
        raise ConfigError(f"model.{dotted} must be true or false, got {node!r}")
    return node


def frozen_parts(model: Qwen2_5_VLForConditionalGeneration) -> dict[str, list[torch.nn.Module]]:
    """The modules each freeze flag of the model section names: vision tower, merger, LLM."""
    visual = model.model.visual
    return {
        "image_encoder.vision_encoder.freeze": [visual.patch_embed, visual.blocks],
        "image_encoder.vision_projector.freeze": [visual.merger],
        "text_decoder.freeze": [model.model.language_model, model.lm_head],
    }


def apply_freeze(model: Qwen2_5_VLForConditionalGeneration, model_cfg: Config) -> list[str]:
    """Turn off gradients of the parts whose freeze flag is set; returns those flags."""
    frozen = []
    for flag, modules in frozen_parts(model).items():
        if _freeze_flag(model_cfg, flag):
            frozen.append(flag)
            for module in modules:
                module.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("model: every part is frozen, nothing would train")
    return frozen


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Qwen2.5-VL module inside a DDP wrapper (FSDP2 keeps the module itself)."""
    return getattr(model, "module", model)
