"""FLF2V (first and last frame to video): Wan2.1's I2V model whose image embedder takes the CLIP tokens of two
images with a learned position embedding (diffusers' ``pos_embed_seq_len``, MindSpeed-MM's ``model_type`` flf2v)."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import CLIPVisionConfig

from mm_core.config import Config
from mm_core.errors import ConfigError
from mm_models_video.encoders import clip_tokens
from mm_models_video.wan2_1.flavors import Flavor

FLF2V = "flf2v"


def is_flf2v(predictor: nn.Module) -> bool:
    """Whether a WanTransformer3DModel is an FLF2V one (its image embedder has a position embedding)."""
    return bool(predictor.config.get("pos_embed_seq_len"))


def flf2v_overrides(predictor: Config, flavor: Flavor) -> dict[str, Any]:
    """The WanTransformer3DModel argument model_type flf2v sets: the position embedding of two images' tokens."""
    if predictor.model_type != FLF2V:
        return {}
    tokens = predictor.clip_token_len or clip_tokens(CLIPVisionConfig(**flavor.image_encoder))
    return {"pos_embed_seq_len": 2 * tokens}


def image_tokens(predictor: nn.Module, tokens: int) -> int:
    """The image tokens the cross-attention sees: one image's CLIP ``tokens``, an FLF2V model's two images'."""
    if not is_flf2v(predictor):
        return tokens
    if predictor.config.pos_embed_seq_len != 2 * tokens:
        raise ConfigError(f"the FLF2V transformer embeds {predictor.config.pos_embed_seq_len} image tokens but the "
                          f"image encoder gives {tokens} per image (2 images: {2 * tokens})")
    return 2 * tokens


def check_trainable(predictor: nn.Module) -> None:
    """A ConfigError for training an FLF2V transformer: mm trains I2V from first frames only."""
    if is_flf2v(predictor):
        raise ConfigError("an FLF2V model (model.predictor.model_type flf2v, pos_embed_seq_len "
                          f"{predictor.config.pos_embed_seq_len}) runs in mm infer only: mm run trains I2V on first "
                          "frames, not on first and last")
