"""The data section to a resumable DataLoader: read mllm_format, tokenize (cached), pack or pad."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import DataLoader
from transformers import Qwen2_5_VLConfig

from mm_convert.load_cache import is_mindspeed_checkpoint
from mm_core.config import Config
from mm_core.errors import ConfigError
from mm_data.bad_samples import BadSamples
from mm_data.mllm_format import read_mllm_dataset
from mm_data.sampler import build_dataloader
from mm_models_vlm.qwen2_5_vl import model_json
from mm_models_vlm.qwen2_5_vl.batch import Batch, collate_padded
from mm_models_vlm.qwen2_5_vl.cache import cache_key, load_or_encode, load_processor
from mm_models_vlm.qwen2_5_vl.dataset import ConversationDataset
from mm_models_vlm.qwen2_5_vl.encode import EncodeSettings
from mm_models_vlm.qwen2_5_vl.mindspeed_checkpoint import as_hf_folder
from mm_models_vlm.qwen2_5_vl.packing import RopeIndex, collate_packed
from mm_models_vlm.qwen2_5_vl.synthetic import make_shapes_dataset
from mm_models_vlm.qwen2_5_vl.tiny import make_tiny_checkpoint

log = logging.getLogger("mm")


def cache_root(config: Config) -> Path:
    """``basic_parameters.cache_dir``, or ``<training.output_dir>/cache``."""
    cache_dir = config.data.dataset_param.basic_parameters.cache_dir
    return Path(cache_dir) if cache_dir else Path(config.training.output_dir) / "cache"


def model_dir(config: Config) -> Path:
    """The Hugging Face directory to load: ``model.from_pretrained`` (a MindSpeed-MM checkpoint there is converted
    once into the cache), or the generated tiny model."""
    if config.model.from_pretrained:
        path = Path(config.model.from_pretrained)
        if is_mindspeed_checkpoint(path):
            hf_dir = config.data.dataset_param.preprocess_parameters.model_name_or_path
            return as_hf_folder(path, Path(hf_dir or path), cache_root(config))
        return path
    if config.model.flavor != "tiny":
        raise ConfigError(f"model.flavor {config.model.flavor!r} needs model.from_pretrained (a Hugging Face "
                          "directory such as Qwen2.5-VL-3B-Instruct); only flavor tiny is generated")
    return make_tiny_checkpoint(cache_root(config) / "tiny-qwen2_5_vl")


def model_config(config: Config) -> Qwen2_5_VLConfig:
    """The architecture: ``model.from_pretrained``'s config.json (checked against a MindSpeed-MM model.json's
    architecture keys), else those keys over the processor folder's config (token ids), else the tiny model's."""
    section = config.model
    if config.model.from_pretrained or not model_json.given(section):
        loaded = Qwen2_5_VLConfig.from_pretrained(model_dir(config))
        if config.model.from_pretrained:
            model_json.check(loaded, section, f"{config.model.from_pretrained}/config.json")
        return loaded
    base_dir = processor_dir(config)
    if not (base_dir / "config.json").is_file():
        raise ConfigError(f"model.json gives an architecture but {base_dir} has no config.json for the token ids: "
                          "set data preprocess_parameters.model_name_or_path to the Hugging Face folder")
    return model_json.build_config(section, Qwen2_5_VLConfig.from_pretrained(base_dir))


def processor_dir(config: Config) -> Path:
    """``preprocess_parameters.model_name_or_path``, or the model's directory."""
    path = config.data.dataset_param.preprocess_parameters.model_name_or_path
    return Path(path) if path else model_dir(config)


def encode_settings(config: Config) -> EncodeSettings:
    """The tokenization settings from the data section."""
    pp, bp = config.data.dataset_param.preprocess_parameters, config.data.dataset_param.basic_parameters
    if bp.cutoff_len < 8:
        raise ConfigError(f"data.dataset_param.basic_parameters.cutoff_len must be at least 8, got {bp.cutoff_len}")
    return EncodeSettings(
        cutoff_len=bp.cutoff_len, image_min_pixels=pp.image_min_pixels, image_max_pixels=pp.image_max_pixels,
        video_min_pixels=pp.video_min_pixels, video_max_pixels=pp.video_max_pixels, video_fps=float(pp.video_fps),
        video_maxlen=pp.video_maxlen, train_on_prompt=bp.train_on_prompt, mask_history=bp.mask_history,
    )


def build_dataset(config: Config, runtime) -> ConversationDataset:
    """Read and tokenize the dataset (local rank 0 fills the cache, the other ranks then read it)."""
    bp = config.data.dataset_param.basic_parameters
    dataset, dataset_dir = bp.dataset, bp.dataset_dir
    if dataset is None:
        dataset = str(make_shapes_dataset(cache_root(config) / "data"))
        dataset_dir = str(Path(dataset).parent)
    attr = dict(config.data.dataset_param.attr)
    if attr.pop("formatting") != "sharegpt":
        raise ConfigError(f"data.dataset_param.attr.formatting {config.data.dataset_param.attr.formatting!r}: "
                          "qwen2_5_vl reads sharegpt-style conversations (messages of role and content) only")
    malformed = BadSamples(config.data.on_bad_sample)
    records = read_mllm_dataset(dataset, dataset_dir, attr, bp.max_samples, malformed)
    if malformed.count and runtime.is_main:
        log.warning("qwen2_5_vl data: skipped %d malformed record(s) of %s (first: %s)", malformed.count, dataset,
                    malformed.reasons[0])
    settings, proc_dir = encode_settings(config), processor_dir(config)
    files = [f.strip() for f in dataset.split(",") if f.strip()]
    key = cache_key(files, {"dataset_dir": str(Path(dataset_dir).absolute()), "attr": attr,
                            "max_samples": bp.max_samples}, proc_dir, settings)
    cache_file = cache_root(config) / f"qwen2_5_vl_{key}.pt"

    def encoded(overwrite: bool):
        return load_or_encode(records, cache_file, proc_dir, settings, bp.preprocessing_num_workers,
                              bp.preprocessing_batch_size, config.data.on_bad_sample, overwrite)

    if runtime.local_rank == 0:
        samples, stats = encoded(bp.overwrite_cache)
    runtime.barrier()
    if runtime.local_rank != 0:
        samples, stats = encoded(False)
    if runtime.is_main:
        log.info("qwen2_5_vl data: %s", stats.summary())
    return ConversationDataset(samples, load_processor(proc_dir), settings)


class Collator:
    """Packs or pads a list of items (a picklable callable, for DataLoader worker processes)."""

    def __init__(self, packing: bool, pad_token_id: int, rope: RopeIndex) -> None:
        self.packing = packing
        self.pad_token_id = pad_token_id
        self.rope = rope

    def __call__(self, items: Sequence[dict]) -> Batch:
        return collate_packed(items, self.rope) if self.packing else collate_padded(items, self.pad_token_id)


def packs(bp: Config) -> bool:
    """Whether micro-batches are packed: ``packing``, or MindSpeed-MM's ``neat_packing`` when given."""
    neat = bp.get("neat_packing")
    return bp.packing if neat is None else bool(neat)


def build_train_loader(config: Config, runtime) -> DataLoader:
    """A DataLoader of micro-batches for this data-parallel rank, resumable mid-epoch."""
    dataset = build_dataset(config, runtime)
    rope = RopeIndex(model_config(config))
    p = config.data.dataloader_param
    packing = packs(config.data.dataset_param.basic_parameters)
    seed = p.seed if p.seed is not None else config.training.seed
    return build_dataloader(dataset, config.training.micro_batch_size, runtime.dp_rank, runtime.dp_size, seed,
                            p.shuffle, p.drop_last, p.num_workers, p.pin_memory and runtime.device.type != "cpu",
                            Collator(packing, dataset.processor.tokenizer.pad_token_id, rope),
                            prefetch_factor=p.prefetch_factor, persistent_workers=p.persistent_workers)
