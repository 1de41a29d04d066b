"""Preference pairs (the generator's data.jsonl) read with the model plugin's own video preprocessing."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mm_core.config import Config
from mm_core.errors import DataError, PluginError
from mm_core.runtime import Runtime
from mm_data.datasets import collate
from mm_data.formats import VideoRecord, parse_data_config
from mm_data.sampler import bucket_keys, build_rank_loader
from mm_models_video.video_dpo.synthetic import make_preference_set

PAIR_KEYS = ("file", "file_rejected", "captions", "score", "score_rejected")
# What a batch carries besides the model plugin's inputs.
PAIR_ENTRIES = ("video_rejected", "score", "score_rejected")


@dataclass(frozen=True)
class Pair:
    """One line of data.jsonl: the chosen and the rejected clip of a caption, and their scores."""

    chosen: VideoRecord
    rejected: VideoRecord
    score: float
    score_rejected: float


def _entries(path: Path) -> list[tuple[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):  # the guide shows data.jsonl as one JSON list
            return [(f"{path} entry {n}", e) for n, e in enumerate(json.loads(text))]
        return [(f"{path}:{n}", json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as exc:
        raise DataError(f"preference data {path} is not valid JSON lines: {exc}") from None


def read_pairs(data_path: str | Path, data_folder: str | Path | None = None) -> list[Pair]:
    """The pairs of a data.jsonl; clip paths are relative to ``data_folder`` (default: the file's folder)."""
    path = Path(data_path)
    if not path.is_file():
        raise DataError(f"preference data {path} does not exist (data.dataset_param.basic_parameters.data_path)")
    folder = Path(data_folder) if data_folder else path.parent
    pairs = []
    for where, entry in _entries(path):
        missing = [key for key in PAIR_KEYS if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise DataError(f"{where}: a preference pair needs {', '.join(PAIR_KEYS)}; missing {', '.join(missing)}")
        caption = entry["captions"]
        chosen, rejected = (VideoRecord(folder / entry[key], caption) for key in ("file", "file_rejected"))
        pairs.append(Pair(chosen, rejected, float(entry["score"]), float(entry["score_rejected"])))
    if not pairs:
        raise DataError(f"preference data {path} holds no pair")
    return pairs


class PreferenceDataset(Dataset):
    """Both clips of each pair, read by copies of the model plugin's dataset (same frames, size, fps, tokenizer).

    An item is the plugin's item for the chosen clip plus ``video_rejected``, ``score`` and ``score_rejected``. The
    clip window is drawn from the pair's index, so both clips show the same frames. A pair with a bad clip is
    skipped (or raised) as the plugin's dataset does with a bad sample.
    """

    def __init__(self, template: Dataset, pairs: list[Pair]) -> None:
        if not (hasattr(template, "records") and callable(getattr(template, "load", None))):
            raise PluginError(f"video_dpo reads pairs through the model plugin's video dataset (records and "
                              f"load(index), as mm_data.VideoTextDataset); {type(template).__name__} has neither")
        self.pairs = pairs
        self.chosen, self.rejected = copy.copy(template), copy.copy(template)
        self.chosen.records = [p.chosen for p in pairs]
        self.rejected.records = [p.rejected for p in pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def shapes(self) -> list[tuple[int | None, int | None, int | None]]:
        """Each pair's (num_frames, height, width) as the index states them, for bucketing."""
        return [pair.chosen.shape for pair in self.pairs]

    epoch_keyed = True  # read with (epoch, index): the chosen clip's caption is dropped per epoch (data.json cfg)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            try:
                item = self.chosen.load(candidate, epoch)
                rejected = self.rejected.load(candidate, epoch)
            except DataError as exc:
                self.chosen.bad.skip(exc)
                continue
            pair = self.pairs[candidate]
            return {**item, "video_rejected": rejected["video"], "score": torch.tensor(pair.score),
                    "score_rejected": torch.tensor(pair.score_rejected)}
        raise DataError(f"no pair of the {len(self)} in the preference data can be read")


def preference_source(config: Config, template: Dataset) -> tuple[Path, Path | None]:
    """The data.jsonl and its folder the data section names; the generated smooth-vs-flicker set when none."""
    param = parse_data_config(json.loads(json.dumps(config.data, default=str)), "data").dataset_param
    if param.data_path:
        return Path(param.data_path), Path(param.data_folder) if param.data_folder else None
    fps = int(getattr(template, "target_fps", None) or 8)
    folder = make_preference_set(template.num_frames, template.height, template.width, fps)
    return folder / "data.jsonl", folder / "videos"


def build_preference_loader(config: Config, runtime: Runtime, template: Dataset) -> DataLoader:
    """This rank's resumable loader of preference pairs, batched and bucketed like the plugin's own data."""
    if getattr(template, "records", None) is None:
        raise PluginError("video_dpo needs the model plugin to read videos; extracted features "
                          "(dataset_type feature) hold no rejected clip: point the data section at the videos")
    data_path, folder = preference_source(config, template)
    dataset = PreferenceDataset(template, read_pairs(data_path, folder))
    loader = parse_data_config(json.loads(json.dumps(config.data, default=str)), "data").dataloader_param
    buckets = bucket_keys(dataset.shapes(), loader.group_frame, loader.group_resolution)
    return build_rank_loader(dataset, loader, config.training.micro_batch_size, runtime, config.training.seed,
                             collate, buckets, with_epoch=True)
