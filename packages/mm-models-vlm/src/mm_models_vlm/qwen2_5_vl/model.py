"""Load Qwen2.5-VL from a Hugging Face directory, freeze parts of it, and give packed rows their positions."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import Qwen2_5_VLForConditionalGeneration

from mm_core.config import Config
from mm_core.errors import ConfigError


def load_model(path: str | Path, attn_implementation: str = "sdpa") -> Qwen2_5_VLForConditionalGeneration:
    """``from_pretrained`` in float32 on the CPU (engines cast and place it); one-line error on a bad directory."""
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"model.from_pretrained {path} is not a Hugging Face directory (no config.json)")
    try:
        return Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(path), dtype=torch.float32, attn_implementation=attn_implementation
        )
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"cannot load Qwen2.5-VL from {path}: {str(exc).splitlines()[0]}") from None


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


def packed_position_ids(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """``[4, 1, L]`` positions of a packed row: text positions restarting per sample, then per-sample mRoPE.

    mRoPE comes from transformers' own ``get_rope_index``, run on the samples as a padded batch, so
    each sample's 3-D positions are exactly those it would get alone; the leading text row restarts
    at 0 for every sample, which is how transformers recognises packed sequences and masks across them.
    """
    lengths = batch["cu_seqlens"].diff().tolist()
    ids = pad_sequence(batch["input_ids"][0].split(lengths), batch_first=True)
    types = pad_sequence(batch["mm_token_type_ids"][0].split(lengths), batch_first=True)
    mask = pad_sequence([torch.ones(n, dtype=torch.long, device=ids.device) for n in lengths], batch_first=True)
    mrope, _ = unwrap(model).model.get_rope_index(
        ids, types, image_grid_thw=batch.get("image_grid_thw"), video_grid_thw=batch.get("video_grid_thw"),
        second_per_grid_ts=batch.get("second_per_grid_ts"), attention_mask=mask,
    )
    text = torch.cat([torch.arange(n, device=ids.device) for n in lengths])
    return torch.cat([text[None], mrope[:, mask.bool()]])[:, None, :]
