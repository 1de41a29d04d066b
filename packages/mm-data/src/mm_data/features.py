"""Feature stores, written crash-safely and read: mm's (per-sample tensors in safetensors shards plus a ``data.jsonl``
index) and MindSpeed-MM's (one torch file per sample under ``features/`` plus a ``data.jsonl``)."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from mm_core.errors import DataError

if TYPE_CHECKING:
    from typing_extensions import Self

INDEX = "data.jsonl"


class FeatureWriter:
    """Appends samples (dicts of tensors plus JSON metadata) to ``out_dir`` in shards of ``shard_size``.

    A shard is written under a temporary name and renamed when complete; its index lines are
    appended after the rename, so the index only ever names complete shards and a crash loses at
    most the samples of the shard being written. Use one writer per directory (one per rank).
    """

    def __init__(self, out_dir: str | Path, shard_size: int = 256, prefix: str = "shard") -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if (self.out_dir / INDEX).exists():
            raise DataError(f"feature store {self.out_dir} already has a {INDEX}; write into a new folder")
        self.shard_size = shard_size
        self.prefix = prefix
        self.num_samples = 0
        self._num_shards = 0
        self._pending: list[tuple[dict[str, torch.Tensor], dict[str, Any]]] = []

    def add(self, tensors: Mapping[str, torch.Tensor], **meta: Any) -> None:
        """Queue one sample's tensors (e.g. latents, prompt_embeds, prompt_mask) and metadata (e.g. prompt)."""
        self._pending.append(({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, meta))
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the queued samples as one complete shard and index them."""
        if not self._pending:
            return
        name = f"{self.prefix}-{self._num_shards:05d}.safetensors"
        flat, lines = {}, []
        for offset, (tensors, meta) in enumerate(self._pending):
            sample = self.num_samples + offset
            flat.update({f"{sample}/{key}": value for key, value in tensors.items()})
            lines.append(json.dumps({"sample": sample, "shard": name, "keys": list(tensors), "meta": meta}) + "\n")
        tmp = self.out_dir / f".{name}.tmp"
        save_file(flat, str(tmp))
        os.replace(tmp, self.out_dir / name)
        with open(self.out_dir / INDEX, "a", encoding="utf-8") as index:
            index.write("".join(lines))
            index.flush()
            os.fsync(index.fileno())
        self.num_samples += len(self._pending)
        self._num_shards += 1
        self._pending = []

    def close(self) -> None:
        """Flush the last, partial shard."""
        self.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_feature_index(path: str | Path) -> list[dict[str, Any]]:
    """The index entries of a feature store (its folder or its data.jsonl); a torn last line is ignored."""
    path = Path(path)
    index = path / INDEX if path.is_dir() else path
    if not index.is_file():
        raise DataError(f"feature store {path} has no {INDEX}")
    text = index.read_text(encoding="utf-8")
    # A line counts once its newline is written; anything after the last newline is a crash's leftover.
    lines = text.split("\n")[:-1]
    entries = []
    for n, line in enumerate(lines, 1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            raise DataError(f"{index}:{n} is not a JSON object") from None
    return entries


class FeatureDataset(Dataset):
    """Map-style dataset over a feature store: item ``i`` is its tensors plus its metadata, as written."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.root = path if path.is_dir() else path.parent
        self.entries = read_feature_index(path)
        self._open: tuple[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict[str, Any]:
        # Open shard handles do not pickle; DataLoader workers reopen their own.
        return {**self.__dict__, "_open": None}

    def _shard(self, name: str) -> Any:
        # Samples are mostly read in shard order, so keeping the last shard open avoids most reopenings.
        if self._open is None or self._open[0] != name:
            try:
                self._open = (name, safe_open(str(self.root / name), framework="pt"))
            except (OSError, SafetensorError) as exc:
                raise DataError(f"feature shard {self.root / name} cannot be read: {exc}") from None
        return self._open[1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        shard = self._shard(entry["shard"])
        item: dict[str, Any] = {key: shard.get_tensor(f"{entry['sample']}/{key}") for key in entry["keys"]}
        item.update(entry["meta"])
        return item


CAPTION_KEYS = ("captions", "cap", "caption", "prompt")
MINDSPEED_FOLDER = "features"


def is_mindspeed_index(entries: list[dict[str, Any]]) -> bool:
    """Whether index entries are MindSpeed-MM's (``{"file": "features/x.pt", ...}``) rather than mm's shards."""
    return bool(entries) and "file" in entries[0] and "shard" not in entries[0]


def _caption(entry: Mapping[str, Any]) -> str | None:
    value = next((entry[k] for k in CAPTION_KEYS if k in entry), None)
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def _unbatched(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A [1, ...] tensor without its leading 1 (MindSpeed-MM keeps the tokenizer's batch of one)."""
    return tensor[0] if tensor is not None and tensor.ndim > 1 and tensor.shape[0] == 1 else tensor


def _trim(embeds: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A prompt's embeddings [L, D] up to its mask's length (MindSpeed-MM stores them padded)."""
    embeds = embeds[0] if embeds.ndim == 3 and embeds.shape[0] == 1 else embeds
    return embeds if mask is None else embeds[: int(mask.reshape(-1).bool().sum())]


class MindSpeedFeatureDataset(Dataset):
    """MindSpeed-MM's feature store: ``data.jsonl`` lines ``{"file": "features/x.pt", ...}`` under ``data_folder``,
    one torch file per sample holding ``video`` (latents), ``prompt_ids`` / ``prompt_mask`` (the text encoder's
    padded embeddings and mask; lists for two text encoders) and, for I2V, more latents.

    Item ``i`` is in mm's names: ``latents``; ``prompt_embeds``, the first text encoder's embeddings trimmed to its
    mask (the loader pads them back with their mask); a further encoder's whole, with its mask, as
    ``prompt_embeds_2`` / ``prompt_mask_2`` (Step-Video attends to every hunyuan_clip token); the other tensors as
    stored; ``prompt`` from the line's caption; ``index``, the line's (mm writes the video's), else its position.
    Files load with ``weights_only`` (tensors only, no code).
    """

    def __init__(self, path: str | Path, data_folder: str | Path | None = None) -> None:
        path = Path(path)
        self.root = Path(data_folder) if data_folder else (path if path.is_dir() else path.parent)
        self.entries = read_feature_index(path)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        file = self.root / entry["file"]
        try:
            data = torch.load(file, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise DataError(f"feature file {file} cannot be read: {exc}") from None
        if not isinstance(data, dict) or "video" not in data:
            raise DataError(f"feature file {file} holds no 'video' latents (expected MindSpeed-MM's feature layout)")
        item: dict[str, Any] = {"latents": data.pop("video")}
        texts, masks = data.pop("prompt_ids", None), data.pop("prompt_mask", None)
        if isinstance(texts, torch.Tensor):
            texts, masks = [texts], [masks]
        masks = list(masks) if isinstance(masks, (list, tuple)) else [None] * len(texts or [])
        for n, (embeds, mask) in enumerate(zip(texts or [], masks)):
            if n == 0:
                item["prompt_embeds"] = _trim(embeds, mask)
                continue
            item[f"prompt_embeds_{n + 1}"] = _unbatched(embeds)
            if mask is not None:
                item[f"prompt_mask_{n + 1}"] = _unbatched(mask)
        item.update(data)
        item["prompt"] = _caption(entry)
        item["index"] = int(entry.get("index", index))
        return item


def mindspeed_file_name(video: str | Path) -> str:
    """The feature file MindSpeed-MM names after a video: its base name, dots as underscores, then ``.pt``."""
    return Path(video).name.replace(".", "_") + ".pt"


def mindspeed_file_names(videos: list[str | Path]) -> list[str]:
    """Each video's MindSpeed-MM feature file name; a DataError naming two videos that would share one."""
    names: dict[str, Path] = {}
    for video in videos:
        name = mindspeed_file_name(video)
        if name in names:
            raise DataError(f"videos {names[name]} and {video} would both be stored as {MINDSPEED_FOLDER}/{name} "
                            "(MindSpeed-MM's layout names a feature file after the video's base name); rename one")
        names[name] = Path(video)
    return list(names)


class MindSpeedFeatureWriter:
    """Writes samples as MindSpeed-MM's feature extraction does: one torch file per sample under
    ``out_dir/features/`` (its tensors in MindSpeed-MM's names) and one line ``{..., "file": "features/x.pt"}`` in
    ``out_dir/index_name``.

    A file is saved under a temporary name and renamed when complete; its line is appended (and synced) after the
    rename, so the index only ever names complete files. Use one writer (one ``index_name``) per rank.
    """

    def __init__(self, out_dir: str | Path, index_name: str = INDEX) -> None:
        self.out_dir = Path(out_dir)
        (self.out_dir / MINDSPEED_FOLDER).mkdir(parents=True, exist_ok=True)
        self.index = self.out_dir / index_name
        if self.index.exists():
            raise DataError(f"feature store {self.out_dir} already has a {index_name}; write into a new folder")

    def add(self, name: str, tensors: Mapping[str, Any], **line: Any) -> None:
        """Save one sample's tensors (a tensor, or a list of them per key) as ``features/name`` and index it."""
        relative = f"{MINDSPEED_FOLDER}/{name}"
        target = self.out_dir / relative
        tmp = target.with_name(f".{name}.tmp")
        torch.save({key: _to_cpu(value) for key, value in tensors.items()}, tmp)
        os.replace(tmp, target)
        with open(self.index, "a", encoding="utf-8") as index:
            index.write(json.dumps({**line, "file": relative}) + "\n")
            index.flush()
            os.fsync(index.fileno())


def _to_cpu(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_to_cpu(v) for v in value]
    return value.detach().cpu().contiguous() if isinstance(value, torch.Tensor) else value


def open_feature_store(path: str | Path, data_folder: str | Path | None = None) -> Dataset:
    """The feature store at ``path`` (a folder or its data.jsonl), mm's shards or MindSpeed-MM's per-sample files."""
    if is_mindspeed_index(read_feature_index(path)):
        return MindSpeedFeatureDataset(path, data_folder)
    return FeatureDataset(path)


def feature_prompts(path: str | Path) -> list[str | None]:
    """The caption of each sample of a feature store, in either layout."""
    entries = read_feature_index(path)
    if is_mindspeed_index(entries):
        return [_caption(e) for e in entries]
    return [e.get("meta", {}).get("prompt") for e in entries]
