"""Encoded samples to the collates' items: ids, labels, token types and the processor's pixels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from mm_core.errors import DataError
from mm_data.video import read_video
from mm_models_vlm.qwen2_5_vl.encode import Encoded, EncodeSettings


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
