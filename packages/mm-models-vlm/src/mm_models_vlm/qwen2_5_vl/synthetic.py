"""A generated mllm_format dataset: images of coloured shapes and a conversation about each."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (40, 60, 230), "yellow": (230, 220, 40)}
SHAPES = ("circle", "square", "triangle")
SIZES = ((56, 56), (56, 84), (84, 56))  # (width, height): several resolutions, so image token counts differ


def draw_shape(shape: str, colour: tuple[int, int, int], size: tuple[int, int], rng: random.Random) -> Image.Image:
    """One shape of ``colour`` at a random place on a dark background."""
    width, height = size
    image = Image.new("RGB", size, (20, 20, 30))
    r = rng.randint(12, min(width, height) // 2 - 4)
    cx, cy = rng.randint(r, width - r), rng.randint(r, height - r)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image


def make_shapes_dataset(root: str | Path, num_samples: int = 96, seed: int = 0) -> Path:
    """Write ``num_samples`` shape images and ``data.json`` in mllm_format under ``root`` (once); returns the json.

    The folder is written under a temporary name and renamed when complete, so processes making it at the
    same time never read a half-written image.
    """
    root = Path(root) / f"shapes_{num_samples}_{seed}"
    index = root / "data.json"
    if index.is_file():
        return index
    rng = random.Random(seed)
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    records = []
    for n in range(num_samples):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        name = f"images/{n:05d}.png"
        draw_shape(shape, COLOURS[colour], rng.choice(SIZES), rng).save(tmp / name)
        records.append({
            "images": [name],
            "messages": [{"role": "user", "content": "<image>What shape is in the image?"},
                         {"role": "assistant", "content": f"A {colour} {shape}."}],
        })
    (tmp / "data.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    try:
        tmp.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp)
    return index
