"""The guide's CustomT2VDataset over a data.json: clips and tokenized captions, as this rank's dataloader."""

from __future__ import annotations

import torch
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mm_core.config import Config
from mm_core.errors import ConfigError
from mm_core.runtime import Runtime
from mm_data.datasets import VideoTextDataset, collate
from mm_data.formats import DataConfig
from mm_data.sampler import bucket_keys, build_rank_loader
from mm_models_video.clip_shape import check_clip, clip_factors
from mm_models_video.custom_dit.model import CustomModel
from mm_models_video.custom_dit.schema import CLIP
from mm_models_video.data_section import parse_data_section
from mm_models_video.pretrained import load_pretrained
from mm_models_video.synthetic import with_synthetic_data
from mm_models_video.tokenizer import build_char_tokenizer

# Token length of the character tokenizer used when tokenizer_config names no pretrained tokenizer.
CHAR_TEXT_LEN = 64
SYNTHETIC_FPS = 8


class PromptTokenizer:
    """Caption -> {"prompt_ids", "prompt_mask"} of ``max_length`` tokens, cleaned as WanPipeline cleans prompts."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_config(cls, tokenizer_config: dict | None) -> PromptTokenizer:
        """From data.json's ``tokenizer_config`` (AutoTokenizer arguments); none gives the tiny character tokenizer."""
        if not isinstance(tokenizer_config, (dict, type(None))):
            raise ConfigError(f"data.dataset_param.tokenizer_config must be an object, got {tokenizer_config!r}")
        config = dict(tokenizer_config or {})
        path = config.pop("pretrained_model_name_or_path", None)
        if path is None:
            return cls(build_char_tokenizer(), int(config.get("model_max_length", CHAR_TEXT_LEN)))
        tokenizer = load_pretrained(AutoTokenizer, str(path), "data.dataset_param.tokenizer_config", **config)
        return cls(tokenizer, tokenizer.model_max_length)

    def __call__(self, caption: str) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(
            prompt_clean(caption),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return {"prompt_ids": tokens.input_ids[0], "prompt_mask": tokens.attention_mask[0]}


class CustomT2VDataset(VideoTextDataset):
    """{"video": uint8 [3, T, H, W], "prompt_ids", "prompt_mask", "prompt", "index"} per data.json entry."""

    @classmethod
    def from_data_config(cls, data: DataConfig, seed: int = 0) -> CustomT2VDataset:
        """Over the dataset_param's index (the generated moving shapes when it names none), tokenizing captions."""
        param = with_synthetic_data(data.dataset_param, SYNTHETIC_FPS)
        tokenizer = PromptTokenizer.from_config(param.tokenizer_config)
        return cls.from_param(param, tokenizer=tokenizer, on_bad_sample=data.on_bad_sample, seed=seed)


def data_config(config: Config) -> DataConfig:
    """The data section parsed as a data.json (once), CLIP giving the clip shape it leaves out."""
    return parse_data_section(config.data, CLIP)


def check_clip_fits(config: Config, model: CustomModel) -> None:
    """A ConfigError unless the data section's clip shape fits the built model's VAE strides × patch size."""
    param = data_config(config).dataset_param
    factors = clip_factors(model.vae_strides, model.predictor.patch_size)
    why = "(Wan VAE stride × model.predictor.patch_size)"
    check_clip(param.num_frames, param.max_height, param.max_width, factors, "data.dataset_param", why)


def build_train_loader(config: Config, runtime: Runtime) -> DataLoader:
    """This rank's resumable dataloader over CustomT2VDataset, per the data section; with epochs (for ``cfg``)."""
    data = data_config(config)
    dataset = CustomT2VDataset.from_data_config(data, seed=config.training.seed)
    loader = data.dataloader_param
    buckets = bucket_keys(dataset.shapes(), loader.group_frame, loader.group_resolution)
    return build_rank_loader(
        dataset, loader, config.training.micro_batch_size, runtime, config.training.seed, collate, buckets,
        with_epoch=True,
    )
