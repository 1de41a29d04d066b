"""Captioned videos (data.json) or their extracted features as a rank's training loader, shared by video families."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mm_core.config import Config
from mm_core.runtime import Runtime
from mm_data.datasets import VideoTextDataset, collate
from mm_data.features import feature_prompts, is_mindspeed_index, open_feature_store, read_feature_index
from mm_data.formats import DataConfig, index_origin, read_index
from mm_data.sampler import bucket_keys, build_rank_loader
from mm_models_video.synthetic import with_synthetic_data

FEATURE_TYPE = "feature"


def video_dataset(config: Config, data: DataConfig, fps: float) -> VideoTextDataset:
    """The raw video-caption dataset the data section names (generated at ``fps`` when it names none)."""
    param = with_synthetic_data(data.dataset_param, fps)
    return VideoTextDataset.from_param(param, on_bad_sample=data.on_bad_sample, seed=config.training.seed,
                                       origin=index_origin(config))


class FeatureCollate:
    """Collates feature samples, zero-padding their trimmed prompt embeddings to ``text_len`` tokens (picklable).

    ``mask_key`` names an entry that gets the padded embeddings' token mask; ``float_keys`` are cast to float32;
    ``renames`` maps entries of MindSpeed-MM's stores to the names the model takes (applied first).
    """

    def __init__(self, text_len: int, mask_key: str | None = None, float_keys: Sequence[str] = (),
                 renames: Mapping[str, str] | None = None) -> None:
        self.text_len, self.mask_key, self.float_keys = text_len, mask_key, tuple(float_keys)
        self.renames = dict(renames or {})

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        padded = []
        for item in items:
            item = {self.renames.get(key, key): value for key, value in item.items()}
            embeds = item["prompt_embeds"]
            out = {**item, "prompt_embeds": F.pad(embeds, (0, 0, 0, self.text_len - len(embeds)))}
            for key in self.float_keys:
                out[key] = out[key].float()
            if self.mask_key is not None:
                mask = torch.zeros(self.text_len, dtype=torch.long)
                mask[: len(embeds)] = 1
                out[self.mask_key] = mask
            padded.append(out)
        return collate(padded)


def stored_keys(data: DataConfig, renames: Mapping[str, str] | None = None) -> list[str]:
    """The entries of a feature store's first sample: from mm's index, or from MindSpeed-MM's first file (read
    as the loader reads it, ``renames`` applied); none for an empty store."""
    param = data.dataset_param
    entries = read_feature_index(param.data_path)
    if not entries:
        return []
    if not is_mindspeed_index(entries):
        return list(entries[0]["keys"])
    first = open_feature_store(param.data_path, param.data_folder or None)[0]
    return [(renames or {}).get(key, key) for key in first]


def build_video_text_loader(config: Config, runtime: Runtime, data: DataConfig, fps: float,
                            feature_collate: Callable[[], FeatureCollate]) -> DataLoader:
    """This rank's resumable dataloader over videos or features (``feature_collate()`` collates those); with epochs."""
    loader = data.dataloader_param
    dataset: Dataset
    if data.dataset_param.dataset_type == FEATURE_TYPE:
        dataset = open_feature_store(data.dataset_param.data_path, data.dataset_param.data_folder or None)
        collate_fn, buckets = feature_collate(), None
    else:
        dataset = video_dataset(config, data, fps)
        collate_fn = collate
        buckets = bucket_keys(dataset.shapes(), loader.group_frame, loader.group_resolution)
    return build_rank_loader(
        dataset, loader, config.training.micro_batch_size, runtime, config.training.seed, collate_fn, buckets,
        with_epoch=True,
    )


def example_prompt(config: Config, data: DataConfig, fps: float) -> str:
    """A caption from the training data (the configured inference prompt when there is none), for a first sample."""
    if data.dataset_param.dataset_type == FEATURE_TYPE:
        captions = feature_prompts(data.dataset_param.data_path)
    else:
        param = with_synthetic_data(data.dataset_param, fps)
        captions = [r.caption for r in read_index(param.data_path, param.data_folder or None, index_origin(config))]
    return next((c for c in captions if isinstance(c, str)), config.inference.prompt)
