"""Qwen2.5-VL as ``pre → layers → post`` for pipeline parallelism (its ``mm_core.PipelinePlan``).

pre (first stage): vision tower and merger, token embedding with the image / video features placed, mRoPE
positions (per sample when packed) — transformers' ``Qwen2_5_VLModel`` pieces, called as its forward calls them.
layers: ``model.language_model.layers``; each one builds its attention mask and rotary tables from the positions
that travel with the hidden states, as ``Qwen2_5_VLTextModel.forward`` does once for all layers.
post (last stage): the final norm, giving the hidden states with the head that the chunked loss expects.

A pipeline's stages exchange tensors of one shape for every micro-batch, so pre right-pads the sequence to the
longest a micro-batch can be (``cutoff_len``, times ``micro_batch_size`` when packed); the padding comes after
every real token, so causal attention keeps it out of their results, and post drops it. A packed row keeps its
samples apart by the block mask transformers builds from the text positions in the carry (``mm_flash_varlen``
then runs sdpa with it): the varlen path would need host ints that the fixed-shape carry cannot take.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from mm_core.config import Config
from mm_core.errors import DataError
from mm_core.plan import PipelinePlan
from mm_models_vlm.qwen2_5_vl.batch import Batch, PaddedBatch
from mm_models_vlm.qwen2_5_vl.data import packs
from mm_models_vlm.qwen2_5_vl.fused_loss import LMHiddenStates
from mm_models_vlm.qwen2_5_vl.packing import PackedBatch

MASKS = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}


def sequence_length(config: Config) -> int:
    """The padded length of every micro-batch's sequence under PP."""
    basic = config.data.dataset_param.basic_parameters
    return int(basic.cutoff_len) * (int(config.training.micro_batch_size) if packs(basic) else 1)



def _vision_embeddings(vlm: torch.nn.Module, batch: Batch, embeds: torch.Tensor) -> torch.Tensor:
    """``embeds`` with the image and video features in place of their placeholder tokens."""
    for kind, pixels, grid in (("image", "pixel_values", "image_grid_thw"),
                               ("video", "pixel_values_videos", "video_grid_thw")):
        if pixels not in batch.vision:
            continue
        encoded = getattr(vlm, f"get_{kind}_features")(batch.vision[pixels], batch.vision[grid], return_dict=True)
        features = torch.cat(encoded.pooler_output).to(embeds.dtype)
        masks = vlm.get_placeholder_mask(batch.input_ids, embeds, **{f"{kind}_features": features})
        embeds = embeds.masked_scatter(masks[kind == "video"], features)
    return embeds


def _mrope_positions(model: torch.nn.Module, batch: PaddedBatch, embeds: torch.Tensor) -> torch.Tensor:
    """The ``[3, B, L]`` mRoPE positions of a padded batch, as the model's forward computes them."""
    positions = model.model.compute_3d_position_ids(
        input_ids=batch.input_ids, image_grid_thw=batch.vision.get("image_grid_thw"),
        video_grid_thw=batch.vision.get("video_grid_thw"), second_per_grid_ts=batch.vision.get("second_per_grid_ts"),
        inputs_embeds=embeds, attention_mask=batch.attention_mask, past_key_values=None,
        mm_token_type_ids=batch.mm_token_type_ids,
    )
    if positions is None:  # no vision input: the language model's own default
        batch_size, length = batch.input_ids.shape
        positions = torch.arange(length, device=embeds.device).view(1, 1, -1).expand(3, batch_size, -1)
    return positions


def pp_pre(model: torch.nn.Module, batch: Batch, length: int) -> tuple[torch.Tensor, ...]:
    """Embeddings with vision features and their positions, right-padded to ``length``.

    A packed row carries its ``[4, 1, length]`` positions (``PackedBatch.pp_carry``); a padded batch its
    ``[3, B, length]`` mRoPE positions and padding mask. The PP padding is never masked: causal attention keeps it
    out of every real token's result.
    """
    vlm, ids = model.model, batch.input_ids
    if ids.shape[1] > length:
        raise DataError(f"a micro-batch of {ids.shape[1]} tokens is longer than the {length} that pipeline "
                        "parallelism pads to (cutoff_len, times micro_batch_size when packing)")
    embeds = _vision_embeddings(vlm, batch, vlm.get_input_embeddings()(ids))
    if isinstance(batch, PackedBatch):
        return batch.pp_carry(embeds, length)
    extra = length - ids.shape[1]
    return (F.pad(embeds, (0, 0, 0, extra)), F.pad(_mrope_positions(model, batch, embeds), (0, extra)),
            F.pad(batch.attention_mask, (0, extra), value=1))


def pp_layer(model: torch.nn.Module, layer: torch.nn.Module, carry: tuple[torch.Tensor, ...], packed: bool) -> tuple:
    """One decoder layer, given the mask and rotary tables that its language model's forward would give it.

    ``packed``: the carry is a packed row's (``PackedBatch.pp_carry``), whose positions lead with the text row
    that keeps its samples apart.
    """
    hidden, positions, *padding = carry
    text, rope = (positions[0], positions[1:]) if packed else (None, positions)
    lm = model.model.language_model
    make_mask = MASKS[lm.config.layer_types[layer.self_attn.layer_idx]]
    # The mask spans the whole sequence: under sequence parallelism ``hidden`` holds this rank's tokens only.
    shape = torch.empty(hidden.shape[0], positions.shape[-1], 0, dtype=hidden.dtype, device=hidden.device)
    mask = make_mask(config=lm.config, inputs_embeds=shape, attention_mask=padding[0] if padding else None,
                     past_key_values=None, position_ids=text)
    out = layer(hidden, attention_mask=mask, position_embeddings=lm.rotary_emb(hidden, rope), position_ids=text)
    return (out, *carry[1:])


def pp_post(model: torch.nn.Module, carry: tuple[torch.Tensor, ...], batch: Batch) -> LMHiddenStates:
    """The final-norm hidden states without the padding, carrying the lm_head (``forward_step``'s output)."""
    hidden = model.model.language_model.norm(carry[0][:, : batch.input_ids.shape[1]])
    output = hidden.as_subclass(LMHiddenStates)
    output.head = model.lm_head
    return output


def model_pipeline_num_layers(config: Config) -> dict[str, Any] | None:
    """The model section's per-stack cuts (MindSpeed-MM's model.json keys), as ``pipeline_num_layers``."""
    model = config["model"]
    sections = {"vit": (model.get("image_encoder") or {}).get("vision_encoder") or {},
                "llm": model.get("text_decoder") or {}}
    cuts = {name: section["pipeline_num_layers"] for name, section in sections.items()
            if section.get("pipeline_num_layers") is not None}
    return cuts or None


def pipeline_plan(model: torch.nn.Module, config: Config) -> PipelinePlan:
    """The pipeline plan: the vision tower runs in pre on the first stage, the LLM is cut."""
    return PipelinePlan(
        layers={"vit": "model.visual.blocks", "llm": "model.language_model.layers"},
        pre=partial(pp_pre, length=sequence_length(config)),
        layer=partial(pp_layer, model, packed=packs(config.data.dataset_param.basic_parameters)),
        post=pp_post,
        pre_modules=["model.visual", "model.language_model.embed_tokens"],
        post_modules=["model.language_model.norm", "lm_head"],
        num_layers=model_pipeline_num_layers(config),
    )
