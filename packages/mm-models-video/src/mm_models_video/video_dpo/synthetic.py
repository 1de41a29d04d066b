"""The embedded run's preference set: per prompt a smooth moving-shape clip and the same clip flickering.

It is made the way a real one is: generated videos (here drawn, not sampled), a prompt file, then the histogram
generator with the built-in frame scorer, which prefers the smooth clip; cached on disk like mm's other
generated data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from mm_data.synthetic import make_moving_shapes, write_video
from mm_models_video.synthetic import cache_dir
from mm_models_video.video_dpo.frames import read_frames
from mm_models_video.video_dpo.histogram import DATA_FILE
from mm_models_video.video_dpo.histogram_generator import generate
from mm_models_video.video_dpo.scorers import FrameStatisticsScorer

PROMPTS = 8
PER_PROMPT = 2


def flicker(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``frames`` (uint8 [T, H, W, 3]) flickering: every other frame brighter, the others darker, by 30 to 70 levels.

    The mean brightness and the sharpness stay about the same; the frame-to-frame change does not.
    """
    signs = np.where(np.arange(len(frames)) % 2 == 0, 1.0, -1.0)
    offsets = (signs * rng.uniform(30, 70, size=len(frames))).reshape(-1, 1, 1, 1)
    return np.clip(frames.astype(np.float32) + offsets, 0, 255).astype(np.uint8)


def make_preference_set(num_frames: int, height: int, width: int, fps: int = 8, prompts: int = PROMPTS,
                        seed: int = 0) -> Path:
    """Write (or reuse) the smooth-vs-flicker videos, prompts.txt, data.jsonl and the histogram; returns the folder.

    The folder holds ``videos/video_{k}.mp4`` (prompt k // 2), ``prompts.txt``, ``data.jsonl`` and
    ``video_score_histogram.json``; which of a prompt's two videos is the smooth one is drawn.
    """
    params = {"prompts": prompts, "num_frames": num_frames, "height": height, "width": width, "fps": fps,
              "seed": seed}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / "datasets" / f"video_dpo_pairs-{key}"
    if (folder / DATA_FILE).is_file():
        return folder
    shapes = make_moving_shapes(cache_dir() / "datasets", num_videos=prompts, num_frames=num_frames,
                                height=height, width=width, fps=fps, seed=seed)
    entries = json.loads((shapes / "data.json").read_text(encoding="utf-8"))
    rng = np.random.default_rng(seed)
    videos = folder / "videos"
    for i, entry in enumerate(entries):
        smooth = read_frames(shapes / entry["path"])
        pair = [smooth, flicker(smooth, rng)]
        if rng.integers(2):
            pair.reverse()
        for j, frames in enumerate(pair):
            write_video(videos / f"video_{i * PER_PROMPT + j}.mp4", frames, fps)
    prompt_file = folder / "prompts.txt"
    prompt_file.write_text("".join(entry["cap"] + "\n" for entry in entries), encoding="utf-8")
    # data.jsonl is written last, so its presence marks a complete set.
    generate(prompt_file, videos, PER_PROMPT, FrameStatisticsScorer(), folder)
    return folder
