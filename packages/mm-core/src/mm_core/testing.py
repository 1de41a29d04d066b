"""Helpers and pytest fixtures for testing mm plugins on the CPU (loaded by pytest automatically)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pluggy
import pytest

from mm_core.plugins import load_plugins, make_config, new_plugin_manager
from mm_core.runtime import create_runtime
from mm_core.trainer import Trainer, TrainResult


def run_training(
    plugins: Sequence[str | ModuleType],
    output_dir: str | Path,
    overrides: Sequence[str] = (),
    files: Sequence[str | Path] = (),
    sections: dict | None = None,
) -> TrainResult:
    """Train with ``plugins`` as ``mm run`` would, writing into ``output_dir``; returns the result."""
    pm = load_plugins(list(plugins))
    config = make_config(pm, "run", files, sections, [*overrides, f"training.output_dir={output_dir}"])
    runtime = create_runtime(config)
    return Trainer(pm, runtime).train()


@pytest.fixture
def mm_pm() -> pluggy.PluginManager:
    """A fresh plugin manager with mm's hookspecs, mm-core's defaults and the installed engines."""
    return new_plugin_manager()


@pytest.fixture
def mm_train(tmp_path: Path):
    """Call ``mm_train(plugins, *overrides)`` to train on the CPU into a temp dir; returns a TrainResult."""

    def train(plugins: Sequence[str | ModuleType], *overrides: str, output_dir: Path | None = None) -> TrainResult:
        return run_training(plugins, output_dir or tmp_path / "run", ["training.device=cpu", *overrides])

    return train
