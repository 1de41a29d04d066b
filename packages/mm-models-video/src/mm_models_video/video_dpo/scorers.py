"""Scoring generated videos per dimension: from the frames themselves, from a scores file, or with VBench.

Every scorer maps each video path to ``{dimension: raw score}``; :mod:`histogram` normalizes each dimension over
the videos and weights them as the seeds' histogram generator does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from mm_core.errors import ConfigError, DataError
from mm_models_video.video_dpo.frames import read_frames

# The five VBench dimensions of the seeds' generator, and its weight for each (VideoDPO's: all equal).
VBENCH_DIMENSIONS = ("subject_consistency", "background_consistency", "motion_smoothness", "aesthetic_quality",
                     "imaging_quality")
FRAME_DIMENSIONS = ("temporal_consistency", "motion_smoothness", "sharpness", "exposure")
DEFAULT_WEIGHT = 4.0

Scores = dict[Path, dict[str, float]]


class Scorer(Protocol):
    """Scores videos: ``score(paths)`` -> {path: {dimension: raw score}} for ``dimensions``."""

    dimensions: tuple[str, ...]

    def score(self, paths: Sequence[Path]) -> Scores:
        """Raw per-dimension scores of each video."""


def frame_statistics(frames: np.ndarray) -> dict[str, float]:
    """The built-in dimensions of one clip (uint8 [T, H, W, 3]); higher is better for each.

    temporal_consistency: 1 - the mean absolute change between consecutive frames (flicker and jumps lower it);
    motion_smoothness: 1 - the mean absolute second difference in time, how far each frame is from the mean of its
    neighbours (constant motion keeps it high); sharpness: the mean absolute spatial gradient; exposure:
    1 - twice the distance of the mean brightness from mid-grey.
    """
    gray = frames.astype(np.float32).mean(axis=-1) / 255.0
    step = np.abs(np.diff(gray, axis=0)).mean() if len(gray) > 1 else 0.0
    accel = np.abs(gray[2:] - 2 * gray[1:-1] + gray[:-2]).mean() / 2 if len(gray) > 2 else 0.0
    sharp = (np.abs(np.diff(gray, axis=1)).mean() + np.abs(np.diff(gray, axis=2)).mean()) / 2
    return {
        "temporal_consistency": float(1.0 - step),
        "motion_smoothness": float(1.0 - accel),
        "sharpness": float(sharp),
        "exposure": float(1.0 - 2.0 * abs(gray.mean() - 0.5)),
    }


class FrameStatisticsScorer:
    """The built-in scorer: temporal consistency, motion smoothness, sharpness and exposure from the decoded frames."""

    dimensions = FRAME_DIMENSIONS

    def score(self, paths: Sequence[Path]) -> Scores:
        """Each video decoded and measured (see :func:`frame_statistics`)."""
        return {Path(path): frame_statistics(read_frames(path)) for path in paths}


def _vbench_results(data: Mapping, source: Path) -> dict[str, dict[str, float]]:
    """{video path: {dimension: score}} of a VBench ``*_eval_results.json`` ({dim: [mean, [{video_path, ...}]]})."""
    scores: dict[str, dict[str, float]] = {}
    for dimension, value in data.items():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], list)):
            raise DataError(f"{source}: dimension {dimension!r} is not VBench's [mean, [per-video results]]")
        for item in value[1]:
            if isinstance(item, dict) and "video_path" in item and isinstance(item.get("video_results"), (int, float)):
                scores.setdefault(str(item["video_path"]), {})[dimension] = float(item["video_results"])
    return scores


def read_scores_file(path: Path) -> dict[str, dict[str, float]]:
    """Scores computed elsewhere: VBench's eval results, {video: {dimension: score}} or {video: score}."""
    if not path.is_file():
        raise ConfigError(f"--scores {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"--scores {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"--scores {path} must hold a JSON object: {{video: {{dimension: score}}}}, {{video: score}} "
                        "or VBench's eval results")
    first = next(iter(data.values()))
    if isinstance(first, list):
        return _vbench_results(data, path)
    scores = {}
    for video, value in data.items():
        if isinstance(value, (int, float)):
            scores[video] = {"score": float(value)}
        elif isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
            scores[video] = {k: float(v) for k, v in value.items()}
        else:
            raise DataError(f"--scores {path}: the score of {video!r} is neither a number nor {{dimension: number}}")
    return scores


def match_scores(found: Mapping[str, dict[str, float]], paths: Sequence[Path], source: str) -> Scores:
    """The scores of ``paths`` from ``found``, whose keys name each video by its path or its file name."""
    by_name = {Path(key).name: value for key, value in found.items()}
    by_path = {str(Path(key).resolve()): value for key, value in found.items()}
    out = {}
    for path in paths:
        value = by_path.get(str(Path(path).resolve())) or by_name.get(Path(path).name)
        if value is None:
            raise DataError(f"{source} has no score for {path}")
        out[Path(path)] = value
    dims = {tuple(sorted(v)) for v in out.values()}
    if len(dims) > 1:
        raise DataError(f"{source}: the videos are not scored on the same dimensions ({sorted(dims)})")
    return out


class ScoreFileScorer:
    """Scores computed elsewhere, read from a JSON file (see :func:`read_scores_file`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.found = read_scores_file(self.path)
        self.dimensions = tuple(sorted(next(iter(self.found.values()))))

    def score(self, paths: Sequence[Path]) -> Scores:
        """The file's scores of ``paths``."""
        return match_scores(self.found, paths, f"--scores {self.path}")


class VBenchScorer:
    """VBench's five dimensions (its models and weights must be installed), as the seeds' generator runs them."""

    dimensions = VBENCH_DIMENSIONS

    def __init__(self, videos_path: Path, full_json_dir: str, output_dir: Path, local: bool = False,
                 imaging_quality_preprocessing_mode: str = "longer") -> None:
        try:
            import vbench
        except ImportError:
            raise ConfigError(
                "--scorer vbench needs VBench and its model weights (pip install vbench, then its checkpoints; "
                "see VBench's README); without them use --scorer frames (computed from the frames) or "
                "--scores FILE (scores computed elsewhere)"
            ) from None
        self.vbench = vbench
        self.videos_path, self.full_json_dir, self.output_dir = videos_path, full_json_dir, output_dir
        self.local, self.preprocessing = local, imaging_quality_preprocessing_mode

    def score(self, paths: Sequence[Path]) -> Scores:
        """Run VBench's evaluation on the videos folder and read its per-video results."""
        import torch

        name = "video_dpo"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        bench = self.vbench.VBench(device, self.full_json_dir, str(self.output_dir))
        bench.evaluate(videos_path=str(self.videos_path), name=name, prompt_list=[],
                       dimension_list=list(self.dimensions), local=self.local, read_frame=False, mode="custom_input",
                       imaging_quality_preprocessing_mode=self.preprocessing)
        results = self.output_dir / f"{name}_eval_results.json"
        return match_scores(read_scores_file(results), paths, str(results))
