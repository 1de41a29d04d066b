"""Runs that survive preemption (SIGTERM, SIGUSR1) and dead ranks (torchrun --max-restarts), resuming exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTS

from mm_core.testing import run_training, spawn_training

PLUGINS = ["mm_core.testing.toy", "fault_plugin"]
NO_PERIODIC_SAVES = "training.save_interval=0"


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[int, float]:
    return run_training(["mm_core.testing.toy"], tmp_path_factory.mktemp("straight")).losses


def test_sigterm_on_one_of_two_ranks_saves_after_the_step_and_resume_continues_exactly(straight, tmp_path, capfd):
    run = tmp_path / "run"
    losses = spawn_training(2, PLUGINS, run, [NO_PERIODIC_SAVES, "model.fault_rank=1"], sys_path=[str(TESTS)])
    checkpoint = run / "checkpoints" / "step_00000003"
    assert sorted(losses) == [1, 2, 3]
    assert (f"stopped by SIGTERM after step 3: run the same command with --resume to continue from {checkpoint}"
            in capfd.readouterr().out)
    resumed = spawn_training(2, ["mm_core.testing.toy"], run, ["training.resume=true"])
    assert resumed == pytest.approx({s: straight[s] for s in (4, 5, 6)}, rel=1e-5)


def test_sigusr1_stops_a_single_process_run_the_same_way(straight, tmp_path):
    result = run_training(PLUGINS, tmp_path, [NO_PERIODIC_SAVES, "model.fault=SIGUSR1", "model.fault_step=2"])
    assert (result.stopped_by, result.step, result.checkpoint.name) == (10, 2, "step_00000002")
    resumed = run_training(["mm_core.testing.toy"], tmp_path, ["training.resume=true"]).losses
    assert resumed == {s: straight[s] for s in (3, 4, 5, 6)}  # bitwise: one process, RNG restored


def test_a_rank_killed_mid_step_under_torchrun_max_restarts_continues_from_the_newest_checkpoint(straight, tmp_path):
    # Rank 1 is SIGKILLed in step 5; torchrun restarts both workers, which resume from step 4's checkpoint.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", "1", "--monitor-interval", "0.2", "-m", "mm_core.cli", "run",
               "--plugin", "mm_core.testing.toy", "--plugin", "fault_plugin",
               "model.fault=SIGKILL", "model.fault_step=5", "model.fault_rank=1",
               "training.save_interval=2", f"training.output_dir={tmp_path}", "training.device=cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torchrun restarted the workers (restart 1): resuming from the newest checkpoint" in done.stderr
    assert f"resumed from {tmp_path / 'checkpoints' / 'step_00000004'} at step 4" in done.stderr
    records = [json.loads(line) for line in Path(tmp_path, "metrics.jsonl").read_text().splitlines()]
    last = {r["step"]: r["loss"] for r in records if "loss" in r}  # the restarted run's lines come last
    assert sorted(last) == [1, 2, 3, 4, 5, 6]
    assert {s: last[s] for s in (5, 6)} == pytest.approx({s: straight[s] for s in (5, 6)}, rel=1e-5)
