"""Encoded samples to model inputs: pixels from the processor, and batches packed or padded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from mm_core.errors import DataError
from mm_data.video import read_video
from mm_models_vlm.qwen2_5_vl.encode import IGNORE_INDEX, Encoded, EncodeSettings
from mm_models_vlm.qwen2_5_vl.fused_loss import target_positions
from mm_models_vlm.qwen2_5_vl.model import RopeIndex, packed_position_ids

VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


class ConversationDataset(Dataset):
    """Items are one sample's ids, labels, token types and the processor's pixel tensors."""

    def __init__(self, samples: Sequence[Encoded], processor, settings: EncodeSettings) -> None:
        self.samples = samples
        self.processor = processor
        self.settings = settings
        self.image_token_id, self.video_token_id = processor.image_token_id, processor.video_token_id

    def __len__(self) -> int:
        return len(self.samples)

    def _images(self, sample: Encoded) -> dict[str, torch.Tensor]:
        if not sample.images:
            return {}
        images = []
        for path in sample.images:
            try:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            except OSError as exc:
                raise DataError(f"image {path} cannot be read: {exc}") from None
        out = self.processor.image_processor(images=images, size=self.settings.image_size(), return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def _videos(self, sample: Encoded) -> dict[str, torch.Tensor]:
        if not sample.videos:
            return {}
        s, vp = self.settings, self.processor.video_processor
        clips = [read_video(path, frames, target_fps=s.video_fps, start=0)
                 for path, frames in zip(sample.videos, sample.video_frames)]
        out = vp(videos=clips, size=s.video_size(), do_sample_frames=False, return_tensors="pt")
        seconds = torch.full((len(clips),), vp.temporal_patch_size / s.video_fps)
        return {"pixel_values_videos": out["pixel_values_videos"], "video_grid_thw": out["video_grid_thw"],
                "second_per_grid_ts": seconds}

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        ids = torch.tensor(sample.input_ids, dtype=torch.long)
        item = {"input_ids": ids, "labels": torch.tensor(sample.labels, dtype=torch.long),
                "mm_token_type_ids": (ids == self.image_token_id).int() + 2 * (ids == self.video_token_id).int(),
                **self._images(sample), **self._videos(sample)}
        merge = self.processor.image_processor.merge_size ** 2
        for grid_key, token_id in (("image_grid_thw", self.image_token_id), ("video_grid_thw", self.video_token_id)):
            expected = int(item[grid_key].prod(-1).sum()) // merge if grid_key in item else 0
            if expected != int((ids == token_id).sum()):
                raise DataError(f"sample {index} ({sample.images or sample.videos}) has {int((ids == token_id).sum())} "
                                f"vision tokens but its media give {expected}: the tokenized cache is stale, "
                                "set data.dataset_param.basic_parameters.overwrite_cache=true")
        return item


def _vision(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([item[key] for item in items if key in item])
            for key in VISION_KEYS if any(key in item for item in items)}


def collate_packed(items: Sequence[dict], rope: RopeIndex) -> dict[str, Any]:
    """All samples in one row; ``cu_seqlens`` marks where each starts so attention stays within it.

    A sample's first label is never a target (nothing precedes it), so it is masked: in the row the
    previous sample's last token must not learn to predict it. Everything the step needs to know about the
    row's layout is made here on the host (positions, ``max_seqlen``, the scored positions, counts), so the
    step reads nothing back from the device.
    """
    lengths = [len(item["input_ids"]) for item in items]
    cu_seqlens = torch.tensor([0, *lengths]).cumsum(0)
    labels = torch.cat([item["labels"] for item in items])[None]
    labels[0, cu_seqlens[:-1]] = IGNORE_INDEX
    return {
        "input_ids": torch.cat([item["input_ids"] for item in items])[None],
        "labels": labels,
        "mm_token_type_ids": torch.cat([item["mm_token_type_ids"] for item in items])[None],
        "position_ids": packed_position_ids(rope, items),
        "cu_seqlens": cu_seqlens.int(),
        "max_seqlen": max(lengths),
        "target_index": target_positions(labels),
        "num_tokens": sum(lengths),
        **_vision(items),
    }


def collate_padded(items: Sequence[dict], pad_token_id: int) -> dict[str, Any]:
    """One row per sample, right-padded, with an attention mask."""
    def pad(key: str, value: int) -> torch.Tensor:
        return pad_sequence([item[key] for item in items], batch_first=True, padding_value=value)

    labels = pad("labels", IGNORE_INDEX)
    return {
        "input_ids": pad("input_ids", pad_token_id),
        "labels": labels,
        "mm_token_type_ids": pad("mm_token_type_ids", 0),
        "attention_mask": pad_sequence([torch.ones_like(item["input_ids"]) for item in items], batch_first=True),
        "target_index": target_positions(labels),
        "num_tokens": sum(len(item["input_ids"]) for item in items),
        **_vision(items),
    }


class Collator:
    """Packs or pads a list of items (a picklable callable, for DataLoader worker processes)."""

    def __init__(self, packing: bool, pad_token_id: int, rope: RopeIndex) -> None:
        self.packing = packing
        self.pad_token_id = pad_token_id
        self.rope = rope

    def __call__(self, items: Sequence[dict]) -> dict[str, Any]:
        return collate_packed(items, self.rope) if self.packing else collate_padded(items, self.pad_token_id)
