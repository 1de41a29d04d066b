"""Helpers for the wan2_1 parallel tests: a short tiny training on N gloo processes and its per-step metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

from wan_testing import QUIET, SMALL_CLIPS

from mm_core.testing import spawn_training

# Three steps of four single-clip micro-batches: every data-parallel size up to 4 sees the same global batch.
SHORT_RUN = [
    *SMALL_CLIPS,
    *QUIET,
    "training.micro_batch_size=1",
    "training.global_batch_size=4",
    "training.train_iters=3",
    "training.lr_warmup_iters=0",
    "training.save_interval=0",
]


def parallel_run(world: int, output_dir: Path, *overrides: str) -> dict[str, list[float]]:
    """Train the tiny wan2_1 on ``world`` processes (one thread each: the CPU is shared); per-step loss, grad norm."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        spawn_training(world, ["wan2_1"], output_dir, [*SHORT_RUN, *overrides])
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = old
    lines = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    return {key: [line[key] for line in lines] for key in ("loss", "grad_norm")}
