"""``mm extract`` for video families: each rank encodes its share of the clips into a feature store, rank 0 indexes.

A family gives how it reads its data section, opens its raw dataset and encodes one item (in the names of the
layout ``extract.layout`` asks for: mm's shards, or MindSpeed-MM's one torch file per sample); this module owns the
rest: the output folder's checks, the rank share, bad-sample skipping, the files, the merged ``data.jsonl`` and the
feature ``data.json`` that training reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mm_core.config import Config
from mm_core.errors import ConfigError, DataError
from mm_core.runtime import Runtime
from mm_data.bad_samples import BadSamples
from mm_data.datasets import VideoTextDataset
from mm_data.features import (
    INDEX,
    FeatureWriter,
    MindSpeedFeatureWriter,
    mindspeed_file_names,
    read_feature_index,
)
from mm_data.formats import DataConfig
from mm_models_video.video_text_data import FEATURE_TYPE

Encode = Callable[[Mapping[str, Any]], dict[str, Any]]
"""Encodes one dataset item (``video``, ``prompt``...) into the tensors a feature sample stores."""
Store = Callable[[int, Mapping[str, Any], Mapping[str, Any]], None]
"""Stores sample ``index``'s encoded tensors (its dataset item gives the caption)."""

MM_LAYOUT, MINDSPEED_LAYOUT = "mm", "mindspeed"
LAYOUTS = (MM_LAYOUT, MINDSPEED_LAYOUT)


def layout(config: Config) -> str:
    """``extract.layout``: ``mm`` (safetensors shards, the default) or ``mindspeed`` (MindSpeed-MM's files)."""
    chosen = config.extract.layout
    if chosen not in LAYOUTS:
        raise ConfigError(f"extract.layout must be one of {', '.join(LAYOUTS)}, got {chosen!r}")
    return chosen


def dtype_of(module: torch.nn.Module) -> torch.dtype:
    """The dtype a frozen encoder computes in (its first parameter's): MindSpeed-MM stores its outputs in it."""
    return next(module.parameters()).dtype


def mindspeed_sample(latents: torch.Tensor, texts: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     **extra: torch.Tensor) -> dict[str, Any]:
    """A sample in MindSpeed-MM's names: ``video``, then ``prompt_ids`` / ``prompt_mask`` (each text encoder's padded
    embeddings [1, L, D] and mask [1, L], as its TextEncoder returns them per sample; a list for several
    encoders), then ``extra`` (the I2V latents)."""
    ids = [embeds.unsqueeze(0) for embeds, _ in texts]
    masks = [mask.unsqueeze(0) for _, mask in texts]
    one = len(texts) == 1
    return {"video": latents, "prompt_ids": ids[0] if one else ids, "prompt_mask": masks[0] if one else masks,
            **extra}


def merge_indexes(out_dir: Path, rank_dirs: list[Path]) -> int:
    """Write ``out_dir``/data.jsonl listing every rank's samples (shard paths relative to ``out_dir``)."""
    lines = []
    for rank_dir in rank_dirs:
        for entry in read_feature_index(rank_dir):
            lines.append(json.dumps({**entry, "shard": f"{rank_dir.name}/{entry['shard']}"}) + "\n")
    (out_dir / INDEX).write_text("".join(lines), encoding="utf-8")
    return len(lines)


def merge_mindspeed_indexes(out_dir: Path, rank_indexes: list[Path]) -> int:
    """Write ``out_dir``/data.jsonl listing every rank's samples in video order, then drop the ranks' indexes."""
    entries = sorted((e for index in rank_indexes for e in read_feature_index(index)), key=lambda e: e["index"])
    tmp = out_dir / f".{INDEX}.tmp"
    tmp.write_text("".join(json.dumps(entry) + "\n" for entry in entries), encoding="utf-8")
    os.replace(tmp, out_dir / INDEX)
    for index in rank_indexes:
        index.unlink()
    return len(entries)


@contextmanager
def _store(config: Config, out_dir: Path, rank: int, videos: VideoTextDataset) -> Iterator[Store]:
    """Where this rank's samples go, in ``extract.layout``: its mm shards, or MindSpeed-MM's files and index lines
    (the video's path and caption, its index and ``file``)."""
    if layout(config) == MINDSPEED_LAYOUT:
        names = mindspeed_file_names([record.path for record in videos.records])
        writer = MindSpeedFeatureWriter(out_dir, f"rank_{rank:05d}.jsonl")

        def add(index: int, item: Mapping[str, Any], tensors: Mapping[str, Any]) -> None:
            path = str(videos.records[index].path)
            writer.add(names[index], tensors, path=path, cap=item["prompt"], index=index)

        yield add
        return
    with FeatureWriter(out_dir / f"rank_{rank:05d}", config.extract.shard_size) as shards:
        yield lambda index, item, tensors: shards.add(tensors, prompt=item["prompt"], index=index)


def _merge(config: Config, out_dir: Path, world_size: int) -> tuple[int, dict[str, str]]:
    """Rank 0's merged data.jsonl: its sample count and the basic_parameters that name it."""
    index = out_dir / INDEX
    if layout(config) == MINDSPEED_LAYOUT:
        count = merge_mindspeed_indexes(out_dir, [out_dir / f"rank_{r:05d}.jsonl" for r in range(world_size)])
        return count, {"data_path": str(index), "data_folder": str(out_dir)}
    count = merge_indexes(out_dir, [out_dir / f"rank_{r:05d}" for r in range(world_size)])
    return count, {"data_path": str(index)}


def extract_features(
    config: Config,
    runtime: Runtime,
    *,
    plugin: str,
    data_config: Callable[[Config], DataConfig],
    dataset: Callable[[Config, DataConfig], VideoTextDataset],
    encoder: Callable[[str], Encode],
) -> str:
    """Encode this rank's share of the videos into ``extract.output_dir``; rank 0 writes data.jsonl, data.json.

    ``encoder(layout)`` is called once the cheap checks passed (it builds the model); its samples are in the
    names of that layout (``mm`` or ``mindspeed``).
    """
    if not config.extract.output_dir:
        raise ConfigError("extract.output_dir is not set: pass --output-dir DIR (where the feature shards go)")
    data = data_config(config)
    if data.dataset_param.dataset_type == FEATURE_TYPE:
        raise ConfigError("data.dataset_param.dataset_type is 'feature': extraction needs the raw videos' data.json")
    out_dir = Path(config.extract.output_dir)
    if (out_dir / INDEX).exists():
        raise DataError(f"extract.output_dir {out_dir} already holds features ({INDEX}); choose a new folder")
    encode = encoder(layout(config))
    videos = dataset(config, data)
    bad = BadSamples(data.on_bad_sample)
    with _store(config, out_dir, runtime.rank, videos) as store:
        for index in range(runtime.rank, len(videos), runtime.world_size):
            try:
                item = videos.load(index)
            except DataError as exc:
                bad.skip(exc)
                continue
            store(index, item, encode(item))
    runtime.barrier()
    if not runtime.is_main:
        return f"rank {runtime.rank}: extracted its share into {out_dir}"
    count, basic = _merge(config, out_dir, runtime.world_size)
    feature_data = {
        "dataset_param": {"dataset_type": FEATURE_TYPE, "basic_parameters": basic},
        "dataloader_param": config.data.to_dict().get("dataloader_param", {}),
        "on_bad_sample": data.on_bad_sample,
    }
    (out_dir / "data.json").write_text(json.dumps(feature_data, indent=2), encoding="utf-8")
    return (
        f"extracted {count} samples ({bad.count} skipped on rank 0) into {out_dir}; train on them with:\n"
        f"  mm run --plugin {plugin} --data {out_dir / 'data.json'}"
    )
