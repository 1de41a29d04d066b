"""Data parallelism with gloo processes on the CPU must train exactly like one process."""

from __future__ import annotations

import shutil

import pytest

from mm_core.testing import run_training, spawn_training

PLUGIN = ["mm_core.testing.toy"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The toy's 6 steps in one process and on 2 DDP ranks, both saving at steps 3 and 6."""
    root = tmp_path_factory.mktemp("runs")
    single = run_training(PLUGIN, root / "one").losses
    return root, single, spawn_training(2, PLUGIN, root / "two")


def test_two_ranks_ddp_equal_one_process(runs):
    _, single, two = runs
    assert two.keys() == single.keys()
    for step, loss in single.items():
        assert two[step] == pytest.approx(loss, rel=1e-5)


def test_checkpoint_from_two_ranks_resumes_on_one(runs):
    root, single, _ = runs
    run_dir = root / "resumed"
    shutil.copytree(root / "two", run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_00000006")
    resumed = run_training(PLUGIN, run_dir, ["training.resume=true"]).losses
    assert sorted(resumed) == [4, 5, 6]
    for step in resumed:
        assert resumed[step] == pytest.approx(single[step], rel=1e-5)
