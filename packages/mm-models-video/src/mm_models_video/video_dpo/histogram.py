"""Scores to preference pairs and a score histogram, in the formats of the seeds' histogram generator.

Each dimension is normalized to [0, 1] over all videos (min-max), the dimensions are averaged with their weights,
and the weighted scores are counted in bins of 0.1: ``video_score_histogram.json`` holds ``{"<lower>-<upper>": count,
..., "total_num", "max_num", "min_bin", "max_bin", "bin_width", "bin_size"}``. For each prompt the best and the
worst of its videos make one line of ``data.jsonl``: ``{"file", "file_rejected", "captions", "score",
"score_rejected"}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mm_core.errors import DataError

BIN_WIDTH = 0.1
HISTOGRAM_FILE = "video_score_histogram.json"
DATA_FILE = "data.jsonl"


def weighted_scores(scores: Mapping[Any, Mapping[str, float]], weights: Mapping[str, float]) -> dict[Any, float]:
    """Each video's weighted mean of its dimensions, each min-max normalized over the videos (a constant one: 0)."""
    videos = list(scores)
    dimensions = sorted(next(iter(scores.values())))
    total = {video: 0.0 for video in videos}
    weight_sum = 0.0
    for dimension in dimensions:
        values = [scores[video][dimension] for video in videos]
        low, high = min(values), max(values)
        weight = weights.get(dimension, 1.0)
        for video, value in zip(videos, values):
            total[video] += weight * ((value - low) / (high - low) if high > low else 0.0)
        weight_sum += weight
    return {video: value / weight_sum for video, value in total.items()}


def bin_key(index: int, bin_width: float) -> str:
    """The histogram's key of bin ``index``, written as the seeds' generator writes it."""
    return f"{index * bin_width}-{index * bin_width + bin_width}"


def build_histogram(values: Sequence[float], bin_width: float = BIN_WIDTH) -> dict[str, float]:
    """The seeds' score histogram of ``values``: bin counts and total_num, max_num, min_bin, max_bin, bin_width..."""
    min_bin = math.floor(min(values) / bin_width)
    max_bin = max(math.ceil(max(values) / bin_width), min_bin + 1)
    counts = {bin_key(i, bin_width): 0 for i in range(min_bin, max_bin)}
    for value in values:
        counts[bin_key(min(math.floor(value / bin_width), max_bin - 1), bin_width)] += 1
    return {**counts, "total_num": len(values), "max_num": max(counts.values()), "min_bin": min_bin,
            "max_bin": max_bin, "bin_width": bin_width, "bin_size": max_bin - min_bin}


def bin_probability(score: float, histogram: Mapping[str, float]) -> float:
    """The share of videos in ``score``'s bin (the top score counts in the last bin, as when it was built)."""
    width = histogram["bin_width"]
    index = math.floor(score / width)
    if "min_bin" in histogram and "max_bin" in histogram:
        index = min(max(index, int(histogram["min_bin"])), int(histogram["max_bin"]) - 1)
    return histogram.get(bin_key(index, width), 0) / histogram["total_num"]


def pair_weight(score: float, score_rejected: float, histogram: Mapping[str, float], alpha: float,
                beta: float | None) -> float:
    """A pair's loss weight ``(beta / sqrt(p(score) p(score_rejected)))^alpha``: rarer score bins weigh more.

    ``beta`` defaults to the most common bin's share (max_num / total_num); the probability is floored at 1e-3.
    """
    if beta is None:
        beta = histogram["max_num"] / histogram["total_num"]
    prob = math.sqrt(bin_probability(score, histogram) * bin_probability(score_rejected, histogram))
    return (beta / max(prob, 1e-3)) ** alpha


def read_histogram(path: str | Path) -> dict[str, float]:
    """A ``video_score_histogram.json``, checked for the keys the pair weights need."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model.dpo.histogram_path {path} does not exist (the histogram generator writes "
                        f"{HISTOGRAM_FILE} beside the videos folder)")
    try:
        histogram = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"model.dpo.histogram_path {path} is not valid JSON: {exc}") from None
    missing = [key for key in ("total_num", "max_num", "bin_width") if key not in histogram]
    if missing:
        raise DataError(f"model.dpo.histogram_path {path} lacks {', '.join(missing)}: not a score histogram")
    return histogram


def preference_pairs(prompts: Sequence[str], groups: Sequence[Sequence[Path]], scores: Mapping[Path, float],
                     videos_path: Path) -> list[dict[str, Any]]:
    """One data.jsonl entry per prompt: its best and worst video (paths relative to ``videos_path``).

    A prompt whose videos all score the same states no preference and is left out.
    """
    entries = []
    for prompt, videos in zip(prompts, groups):
        best = max(videos, key=lambda v: scores[v])
        worst = min(videos, key=lambda v: scores[v])
        if scores[best] == scores[worst]:
            continue
        entries.append({"file": f"./{best.relative_to(videos_path).as_posix()}",
                        "file_rejected": f"./{worst.relative_to(videos_path).as_posix()}",
                        "captions": prompt, "score": scores[best], "score_rejected": scores[worst]})
    if not entries:
        raise DataError(f"the videos in {videos_path} score the same for every prompt: no preference pair")
    return entries


def write_outputs(
    folder: Path, entries: Sequence[Mapping[str, Any]], histogram: Mapping[str, float]
) -> tuple[Path, Path]:
    """``data.jsonl`` (one entry a line) and ``video_score_histogram.json`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / DATA_FILE
    data.write_text("".join(json.dumps(entry) + "\n" for entry in entries), encoding="utf-8")
    hist = folder / HISTOGRAM_FILE
    hist.write_text(json.dumps(histogram), encoding="utf-8")
    return data, hist
