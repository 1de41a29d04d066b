"""Load Qwen2.5-VL from a Hugging Face directory, freeze parts of it, and give packed rows their positions."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel
from transformers.utils.generic import is_flash_attention_requested

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


class RopeIndex:
    """transformers' own Qwen2.5-VL ``get_rope_index``, run without the model: it reads nothing but the config.

    Picklable, so DataLoader workers compute a packed row's positions on the host.
    """

    get_rope_index = Qwen2_5_VLModel.get_rope_index
    get_vision_position_ids = Qwen2_5_VLModel.get_vision_position_ids

    def __init__(self, config: Qwen2_5_VLConfig) -> None:
        self.config = config


def packed_position_ids(rope: RopeIndex, items: list[dict]) -> torch.Tensor:
    """``[4, 1, L]`` positions of ``items`` packed in one row: text positions restarting per sample, then mRoPE.

    Each sample's 3-D positions are those ``get_rope_index`` gives it alone; the leading text row restarts at 0
    for every sample, which is how transformers recognises packed sequences and masks across them (the masking
    implementations; the varlen ones take ``cu_seqlens`` instead, see ``packed_inputs``).
    """
    mrope = [rope.get_rope_index(item["input_ids"][None], item["mm_token_type_ids"][None],
                                 image_grid_thw=item.get("image_grid_thw"), video_grid_thw=item.get("video_grid_thw"),
                                 second_per_grid_ts=item.get("second_per_grid_ts"))[0][:, 0] for item in items]
    text = torch.cat([torch.arange(len(item["input_ids"])) for item in items])
    return torch.cat([text[None], torch.cat(mrope, dim=1)])[:, None, :]


def packed_inputs(model: torch.nn.Module, batch: dict) -> dict:
    """The model inputs that keep a packed row's samples apart, all made on the host by the collate.

    Flash implementations (ours included) get the mRoPE positions and the varlen arguments, so no mask is built;
    the others (sdpa, eager) get the positions with the text row, from which transformers builds a block mask.
    """
    positions = batch["position_ids"]
    if not is_flash_attention_requested(unwrap(model).config):
        return {"position_ids": positions}
    cu_seqlens, longest = batch["cu_seqlens"], batch["max_seqlen"]
    return {"position_ids": positions[1:], "cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens,
            "max_length_q": longest, "max_length_k": longest}
