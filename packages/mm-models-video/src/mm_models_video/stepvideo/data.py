"""The stepvideo training data: captioned videos (data.json / the guide's data.jsonl) or extracted features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mm_core.config import Config
from mm_core.errors import ConfigError
from mm_core.runtime import Runtime
from mm_data.datasets import VideoTextDataset, collate
from mm_data.features import FeatureDataset, read_feature_index
from mm_data.formats import DataConfig, index_origin, read_index
from mm_data.sampler import bucket_keys, build_rank_loader
from mm_models_video import clip_shape
from mm_models_video.data_section import parse_data_section
from mm_models_video.stepvideo.flavors import get_flavor
from mm_models_video.stepvideo.vae import FRAME_LEN, SPATIAL_STRIDE
from mm_models_video.synthetic import with_synthetic_data

FEATURE_TYPE = "feature"


def data_config(config: Config) -> DataConfig:
    """The data section parsed as a data.json (once); clip shape defaults come from the flavor and task."""
    flavor = get_flavor(config.model.flavor)
    clip = {"num_frames": flavor.num_frames[config.model.task], "max_height": flavor.height,
            "max_width": flavor.width}
    return parse_data_section(config.data, clip)


def check_clip(num_frames: int, height: int, width: int, patch_size: int, where: str) -> None:
    """A ConfigError naming ``where`` unless the clip is whole 17-frame chunks of sides a multiple of 16 × patch."""
    if num_frames < FRAME_LEN or num_frames % FRAME_LEN:
        raise ConfigError(f"{where}: num_frames {num_frames} must be a multiple of {FRAME_LEN} "
                          "(the Step-Video VAE encodes and decodes 17-frame chunks)")
    # One frame stands for the clip: the frame count is checked above, the sides here.
    clip_shape.check_clip(1, height, width, (1, SPATIAL_STRIDE * patch_size), where,
                          "for Step-Video (VAE stride 16 × patch size)")


def check_clip_fits(config: Config, patch_size: int) -> None:
    """A ConfigError unless the data section's clips fit the model (features were encoded already)."""
    param = data_config(config).dataset_param
    if param.dataset_type != FEATURE_TYPE:
        check_clip(param.num_frames, param.max_height, param.max_width, patch_size, "data.dataset_param")


def video_dataset(config: Config, data: DataConfig) -> VideoTextDataset:
    """The raw video-caption dataset the data section names (generated when it names none)."""
    param = with_synthetic_data(data.dataset_param, get_flavor(config.model.flavor).fps)
    return VideoTextDataset.from_param(param, on_bad_sample=data.on_bad_sample, seed=config.training.seed,
                                       origin=index_origin(config))


class FeatureCollate:
    """Collates feature samples: the LLM embeddings (stored trimmed) zero-padded to ``llm_len``, with their mask."""

    def __init__(self, llm_len: int) -> None:
        self.llm_len = llm_len

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        padded = []
        for item in items:
            embeds = item["prompt_embeds"]
            mask = torch.zeros(self.llm_len, dtype=torch.long)
            mask[: len(embeds)] = 1
            padded.append({**item, "prompt_embeds": F.pad(embeds, (0, 0, 0, self.llm_len - len(embeds))).float(),
                           "clip_embeds": item["clip_embeds"].float(), "prompt_mask": mask})
        return collate(padded)


def build_train_loader(config: Config, runtime: Runtime) -> DataLoader:
    """This rank's resumable dataloader over videos or features, per the data section; items carry their epoch."""
    data = data_config(config)
    loader = data.dataloader_param
    dataset: Dataset
    if data.dataset_param.dataset_type == FEATURE_TYPE:
        dataset = FeatureDataset(data.dataset_param.data_path)
        llm_len = config.model.tokenizer.llm.model_max_length or get_flavor(config.model.flavor).llm_len
        collate_fn, buckets = FeatureCollate(llm_len), None
    else:
        dataset = video_dataset(config, data)
        collate_fn = collate
        buckets = bucket_keys(dataset.shapes(), loader.group_frame, loader.group_resolution)
    return build_rank_loader(
        dataset, loader, config.training.micro_batch_size, runtime, config.training.seed, collate_fn, buckets,
        with_epoch=True,
    )


def example_prompt(config: Config) -> str:
    """A caption from the training data (the configured inference prompt when there is none), for a first sample."""
    data = data_config(config)
    if data.dataset_param.dataset_type == FEATURE_TYPE:
        captions = [e["meta"].get("prompt") for e in read_feature_index(data.dataset_param.data_path)]
    else:
        param = with_synthetic_data(data.dataset_param, get_flavor(config.model.flavor).fps)
        captions = [r.caption for r in read_index(param.data_path, param.data_folder or None, index_origin(config))]
    return next((c for c in captions if isinstance(c, str)), config.inference.prompt)
