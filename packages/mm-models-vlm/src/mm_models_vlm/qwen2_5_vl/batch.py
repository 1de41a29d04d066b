"""The micro-batches the collates make: what every batch holds and its move to the device, and the padded batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

import torch
from torch.nn.utils.rnn import pad_sequence

from mm_models_vlm.qwen2_5_vl.encode import IGNORE_INDEX
from mm_models_vlm.qwen2_5_vl.fused_loss import target_positions

AnyBatch = TypeVar("AnyBatch", bound="Batch")

VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def vision_inputs(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    """The items' pixel and grid tensors (``VISION_KEYS``), each concatenated over the items that have it."""
    return {key: torch.cat([item[key] for item in items if key in item])
            for key in VISION_KEYS if any(key in item for item in items)}


@dataclass(kw_only=True)
class Batch:
    """What every micro-batch holds, all made on the host by its collate; ``get_batch`` moves it with ``to``."""

    input_ids: torch.Tensor
    """``[B, L]`` token ids."""
    labels: torch.Tensor
    """``[B, L]`` targets, ``IGNORE_INDEX`` where nothing is learned."""
    mm_token_type_ids: torch.Tensor
    """``[B, L]``: 0 text, 1 image, 2 video token."""
    target_index: torch.Tensor
    """Flat indices of the positions whose prediction the loss scores (``target_positions(labels)``)."""
    num_tokens: int
    """The real tokens of the batch, padding excluded."""
    vision: dict[str, torch.Tensor] = field(default_factory=dict)
    """The processor's pixel and grid tensors of the batch's images and videos (``VISION_KEYS``)."""

    def _map_tensors(self: AnyBatch, fn: Callable[[torch.Tensor], torch.Tensor]) -> AnyBatch:
        def apply(value: Any) -> Any:
            if isinstance(value, dict):
                return {key: fn(tensor) for key, tensor in value.items()}
            return fn(value) if isinstance(value, torch.Tensor) else value

        return replace(self, **{f.name: apply(getattr(self, f.name)) for f in fields(self)})

    def to(self: AnyBatch, device: torch.device) -> AnyBatch:
        """The batch with its tensors on ``device`` (copies from pinned memory do not wait)."""
        return self._map_tensors(lambda tensor: tensor.to(device, non_blocking=True))

    def pin_memory(self: AnyBatch) -> AnyBatch:
        """The batch with its tensors in pinned memory (what a DataLoader with ``pin_memory`` calls)."""
        return self._map_tensors(torch.Tensor.pin_memory)

    def model_inputs(self, model: torch.nn.Module) -> dict[str, Any]:
        """The model's keyword arguments for this batch."""
        return {"input_ids": self.input_ids, "mm_token_type_ids": self.mm_token_type_ids, **self.vision}


@dataclass(kw_only=True)
class PaddedBatch(Batch):
    """One row per sample, right-padded to the longest."""

    attention_mask: torch.Tensor
    """``[B, L]``: 1 on real tokens, 0 on padding."""

    def model_inputs(self, model: torch.nn.Module) -> dict[str, Any]:
        """The model's keyword arguments: ids, token types, vision inputs and the padding mask."""
        return {**super().model_inputs(model), "attention_mask": self.attention_mask}


def collate_padded(items: Sequence[dict], pad_token_id: int) -> PaddedBatch:
    """One row per sample, right-padded, with an attention mask."""
    def pad(key: str, value: int) -> torch.Tensor:
        return pad_sequence([item[key] for item in items], batch_first=True, padding_value=value)

    labels = pad("labels", IGNORE_INDEX)
    return PaddedBatch(
        input_ids=pad("input_ids", pad_token_id),
        labels=labels,
        mm_token_type_ids=pad("mm_token_type_ids", 0),
        attention_mask=pad_sequence([torch.ones_like(item["input_ids"]) for item in items], batch_first=True),
        target_index=target_positions(labels),
        num_tokens=sum(len(item["input_ids"]) for item in items),
        vision=vision_inputs(items),
    )
