"""Tokenize a dataset once, in parallel worker processes, and cache it keyed by data and processor settings."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoProcessor

from mm_core.errors import DataError, reason
from mm_data.bad_samples import BadSamples
from mm_data.mllm_format import MllmRecord
from mm_models_vlm.qwen2_5_vl.encode import Encoded, Encoder, EncodeSettings

log = logging.getLogger("mm")

CACHE_VERSION = 1
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "special_tokens_map.json", "chat_template.json", "chat_template.jinja",
                   "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json")


@dataclass
class EncodeStats:
    """What preprocessing kept, dropped and cut."""

    samples: int = 0
    dropped: int = 0
    truncated_samples: int = 0
    truncated_tokens: int = 0
    drop_reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log."""
        line = (f"{self.samples} samples, {self.dropped} dropped, {self.truncated_samples} truncated "
                f"({self.truncated_tokens} tokens cut)")
        return line + (f"; first drop: {self.drop_reasons[0]}" if self.drop_reasons else "")


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def cache_key(dataset_files: list[str], extra: dict, processor_dir: str | Path, settings: EncodeSettings) -> str:
    """A hash of the dataset files' content, the reading options, the processor's files and the settings."""
    processor_dir = Path(processor_dir)
    parts = {
        "version": CACHE_VERSION,
        "data": [_digest(Path(f)) for f in dataset_files],
        "extra": extra,
        "processor": {n: _digest(processor_dir / n) for n in PROCESSOR_FILES if (processor_dir / n).is_file()},
        "settings": settings.as_dict(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def load_processor(path: str | Path):
    """The Qwen2.5-VL processor saved in ``path``; a one-line DataError when it is not there."""
    try:
        return AutoProcessor.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load a processor from {path}: {reason(exc)}") from None


_ENCODER: Encoder | None = None


def _init_worker(processor_dir: str, settings: EncodeSettings) -> None:
    global _ENCODER
    _ENCODER = Encoder(load_processor(processor_dir), settings)


def _encode_chunk(records: list[MllmRecord]) -> list[Encoded | DataError]:
    out: list[Encoded | DataError] = []
    for record in records:
        try:
            out.append(_ENCODER.encode(record))
        except DataError as exc:
            out.append(exc)
    return out


def encode_all(records: list[MllmRecord], processor_dir: str | Path, settings: EncodeSettings, workers: int,
               chunk_size: int, on_bad_sample: str = "skip") -> tuple[list[Encoded], EncodeStats]:
    """Encode every record with up to ``workers`` processes; unusable ones go to ``on_bad_sample`` (skip or error)."""
    bad = BadSamples(on_bad_sample)
    chunks = [records[i : i + chunk_size] for i in range(0, len(records), max(chunk_size, 1))]
    workers = max(1, min(workers, os.cpu_count() or 1, len(chunks)))
    if workers == 1:
        _init_worker(str(processor_dir), settings)
        results = [_encode_chunk(chunk) for chunk in chunks]
    else:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with context.Pool(workers, _init_worker, (str(processor_dir), settings)) as pool:
            results = pool.map(_encode_chunk, chunks)
    samples, stats = [], EncodeStats()
    for result in (r for chunk in results for r in chunk):
        if isinstance(result, DataError):
            bad.skip(result)
            continue
        samples.append(result)
        stats.truncated_samples += bool(result.truncated_tokens)
        stats.truncated_tokens += result.truncated_tokens
    stats.samples, stats.dropped, stats.drop_reasons = len(samples), bad.count, bad.reasons
    if not samples:
        raise DataError(f"no usable sample in the dataset: {stats.summary()}")
    return samples, stats


def load_or_encode(records: list[MllmRecord], cache_file: Path, processor_dir: str | Path, settings: EncodeSettings,
                   workers: int, chunk_size: int, on_bad_sample: str = "skip",
                   overwrite: bool = False) -> tuple[list[Encoded], EncodeStats]:
    """The cached encoding in ``cache_file`` if present, else encode and write it (atomically)."""
    if cache_file.is_file() and not overwrite:
        cached = torch.load(cache_file, weights_only=False)
        log.info("qwen2_5_vl: tokenized data from cache %s", cache_file)
        return cached["samples"], cached["stats"]
    samples, stats = encode_all(records, processor_dir, settings, workers, chunk_size, on_bad_sample)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
    torch.save({"samples": samples, "stats": stats}, tmp)
    tmp.replace(cache_file)
    log.info("qwen2_5_vl: tokenized %s, cached in %s", stats.summary(), cache_file)
    return samples, stats
