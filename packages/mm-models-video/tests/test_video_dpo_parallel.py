"""video_dpo under the engines: FSDP2 (the reference sharded like the actor) and CP equal one process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from wan_testing import QUIET, SMALL_CLIPS

from mm_core.testing import spawn_training

RUN = [*SMALL_CLIPS, *QUIET, "training.micro_batch_size=1", "training.global_batch_size=2", "training.train_iters=2",
       "training.save_interval=0"]
LOGGED = ("loss", "grad_norm", "reward_margin", "chosen_reward")


def dpo_run(world: int, output_dir: Path, *overrides: str) -> dict[str, list[float]]:
    """wan2_1 + video_dpo on ``world`` gloo processes (one thread each); the logged values per step."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        spawn_training(world, ["wan2_1", "video_dpo"], output_dir, [*RUN, *overrides])
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = old
    lines = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    return {key: [line[key] for line in lines] for key in LOGGED}


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides", [["parallel.fsdp2.enable=true"], ["parallel.cp.size=2", "parallel.cp.mode=ulysses"]],
    ids=["fsdp2-2", "ulysses-2"],
)
def test_two_processes_equal_one(tmp_path, overrides) -> None:
    single = dpo_run(1, tmp_path / "one")
    run = dpo_run(2, tmp_path / "two", *overrides)
    for key in LOGGED:  # a reward is a difference of errors: its rounding is that of the errors (~1e-7 here)
        assert run[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
