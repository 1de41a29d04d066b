"""Data parallelism with gloo processes on the CPU must train exactly like one process."""

from __future__ import annotations

from pathlib import Path

import pytest

from mm_core.testing import run_training, spawn_training

TESTS = Path(__file__).parent
ARGS = ("training.device=cpu", "model.dropout=0.0", "training.train_iters=6", "training.save_interval=3")


def _spawn(world: int, out: Path, *extra: str) -> dict[int, float]:
    return spawn_training(world, ["toy_plugin"], out, [*ARGS, *extra], sys_path=[TESTS])


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[int, float]:
    out = tmp_path_factory.mktemp("single")
    return run_training(["toy_plugin"], out, ARGS).losses


def test_two_ranks_ddp_equal_one_process(single, tmp_path):
    losses = _spawn(2, tmp_path)
    assert losses.keys() == single.keys()
    for step, loss in single.items():
        assert losses[step] == pytest.approx(loss, rel=1e-5)


def test_checkpoint_from_two_ranks_resumes_on_one(single, tmp_path):
    _spawn(2, tmp_path, "training.train_iters=3", "training.lr_decay_iters=6")
    resumed = run_training(["toy_plugin"], tmp_path, [*ARGS, "training.resume=true"]).losses
    assert sorted(resumed) == [4, 5, 6]
    for step in resumed:
        assert resumed[step] == pytest.approx(single[step], rel=1e-5)
