"""Shared fixtures: a tiny Qwen2.5-VL directory, its processor, model and a few shape images."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from mm_data.mllm_format import MllmRecord
from mm_models_vlm.qwen2_5_vl.cache import load_processor
from mm_models_vlm.qwen2_5_vl.dataset import ConversationDataset
from mm_models_vlm.qwen2_5_vl.encode import Encoder, EncodeSettings
from mm_models_vlm.qwen2_5_vl.model import load_model
from mm_models_vlm.qwen2_5_vl.packing import RopeIndex
from mm_models_vlm.qwen2_5_vl.synthetic import COLOURS, draw_shape
from mm_models_vlm.qwen2_5_vl.tiny import MAX_PIXELS, MIN_PIXELS, make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2.5-VL Hugging Face directory (random weights), made once per session."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("hf") / "tiny")


@pytest.fixture(scope="session")
def processor(tiny_dir):
    """The tiny directory's processor."""
    return load_processor(tiny_dir)


@pytest.fixture
def model(tiny_dir):
    """A fresh float32 copy of the tiny model."""
    return load_model(tiny_dir).eval()


@pytest.fixture
def rope(model) -> RopeIndex:
    """The tiny model's positions, as the packed collate computes them."""
    return RopeIndex(model.config)


@pytest.fixture(scope="session")
def settings() -> EncodeSettings:
    """Encoding settings matching the tiny processor's pixel range."""
    return EncodeSettings(cutoff_len=256, image_min_pixels=MIN_PIXELS, image_max_pixels=MAX_PIXELS)


@pytest.fixture
def encoder(processor, settings) -> Encoder:
    """An Encoder over the tiny processor."""
    return Encoder(processor, settings)


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> list[Path]:
    """Shape images of three different sizes."""
    root = tmp_path_factory.mktemp("images")
    rng = random.Random(0)
    paths = []
    for n, size in enumerate([(56, 56), (84, 56), (56, 112)]):
        path = root / f"{n}.png"
        draw_shape("circle", COLOURS["red"], size, rng).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def record():
    """Build an MllmRecord from (user, assistant) pairs and images."""

    def make(*turns: str, images=(), videos=()) -> MllmRecord:
        roles = ["user", "assistant"] * len(turns)
        return MllmRecord([{"role": r, "content": t} for r, t in zip(roles, turns)], list(images), list(videos))

    return make


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def items(encoder, processor, settings, record, image_files):
    """Three samples: two images of different sizes, a two-turn text-only one, and a two-image one."""
    records = [
        record("<image>What shape is in the image?", "A red circle.", images=[image_files[1]]),
        record("Describe the picture.", "A green square.", "Which colour is the shape?", "Green."),
        record("<image>Compare <image>", "Two red circles.", images=[image_files[2], image_files[0]]),
    ]
    dataset = ConversationDataset([encoder.encode(r) for r in records], processor, settings)
    return [dataset[i] for i in range(len(dataset))]
