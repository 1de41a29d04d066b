"""A micro-batch packed into one row: ``PackedBatch``, the collate that builds it on the host, its positions, the
model inputs that keep its samples apart, and its padding for pipeline parallelism."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel
from transformers.utils.generic import is_flash_attention_requested

from mm_models_vlm.qwen2_5_vl.batch import Batch, vision_inputs
from mm_models_vlm.qwen2_5_vl.encode import IGNORE_INDEX
from mm_models_vlm.qwen2_5_vl.fused_loss import target_positions
from mm_models_vlm.qwen2_5_vl.model import unwrap


class RopeIndex:
    """transformers' own Qwen2.5-VL ``get_rope_index``, run without the model: it reads nothing but the config.

    Picklable, so DataLoader workers compute a packed row's positions on the host.
    """

    get_rope_index = Qwen2_5_VLModel.get_rope_index
    get_vision_position_ids = Qwen2_5_VLModel.get_vision_position_ids

    def __init__(self, config: Qwen2_5_VLConfig) -> None:
        self.config = config


def packed_position_ids(rope: RopeIndex, items: Sequence[dict]) -> torch.Tensor:
    """``[4, 1, L]`` positions of ``items`` packed in one row: text positions restarting per sample, then mRoPE.

    Each sample's 3-D positions are those ``get_rope_index`` gives it alone; the leading text row restarts at 0
    for every sample, which is how transformers recognises packed sequences and masks across them (the masking
    implementations; the varlen ones take ``cu_seqlens`` instead, see ``PackedBatch.model_inputs``).
    """
    mrope = [rope.get_rope_index(item["input_ids"][None], item["mm_token_type_ids"][None],
                                 image_grid_thw=item.get("image_grid_thw"), video_grid_thw=item.get("video_grid_thw"),
                                 second_per_grid_ts=item.get("second_per_grid_ts"))[0][:, 0] for item in items]
    text = torch.cat([torch.arange(len(item["input_ids"])) for item in items])
    return torch.cat([text[None], torch.cat(mrope, dim=1)])[:, None, :]


@dataclass(kw_only=True)
class PackedBatch(Batch):
    """All samples of a micro-batch in one row (``B`` is 1), with everything about its layout made on the host,
    so the step reads nothing back from the device."""

    position_ids: torch.Tensor
    """``[4, 1, L]``: the text row (restarting at 0 per sample), then each sample's own mRoPE positions."""
    cu_seqlens: torch.Tensor
    """int32 ``[samples + 1]``: where each sample starts, then the row's length."""
    max_seqlen: int
    """The longest sample's length, a host int (the varlen kernel takes it as is)."""

    def model_inputs(self, model: torch.nn.Module) -> dict[str, Any]:
        """The model inputs that keep the row's samples apart.

        Flash implementations (ours included) get the mRoPE positions and the varlen arguments, so no mask is built;
        the others (sdpa, eager) get the positions with the text row, from which transformers builds a block mask.
        """
        inputs = super().model_inputs(model)
        if not is_flash_attention_requested(unwrap(model).config):
            return {**inputs, "position_ids": self.position_ids}
        return {**inputs, "position_ids": self.position_ids[1:], "cu_seq_lens_q": self.cu_seqlens,
                "cu_seq_lens_k": self.cu_seqlens, "max_length_q": self.max_seqlen, "max_length_k": self.max_seqlen}

    def pp_carry(self, embeds: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's carry for this row, right-padded to ``length``: embeddings and ``[4, 1, length]`` positions.

        The padding's positions count from 0, so it is one more sample of the row, which no real token sees.
        """
        extra = length - embeds.shape[1]
        tail = torch.arange(extra, device=embeds.device).expand(*self.position_ids.shape[:2], extra)
        return F.pad(embeds, (0, 0, 0, extra)), torch.cat([self.position_ids, tail.to(self.position_ids.dtype)], dim=2)


def collate_packed(items: Sequence[dict], rope: RopeIndex) -> PackedBatch:
    """All samples in one row; ``cu_seqlens`` marks where each starts so attention stays within it.

    A sample's first label is never a target (nothing precedes it), so it is masked: in the row the
    previous sample's last token must not learn to predict it.
    """
    lengths = [len(item["input_ids"]) for item in items]
    cu_seqlens = torch.tensor([0, *lengths]).cumsum(0)
    labels = torch.cat([item["labels"] for item in items])[None]
    labels[0, cu_seqlens[:-1]] = IGNORE_INDEX
    return PackedBatch(
        input_ids=torch.cat([item["input_ids"] for item in items])[None],
        labels=labels,
        mm_token_type_ids=torch.cat([item["mm_token_type_ids"] for item in items])[None],
        position_ids=packed_position_ids(rope, items),
        cu_seqlens=cu_seqlens.int(),
        max_seqlen=max(lengths),
        target_index=target_positions(labels),
        num_tokens=sum(lengths),
        vision=vision_inputs(items),
    )
