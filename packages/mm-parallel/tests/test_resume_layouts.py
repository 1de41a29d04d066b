"""The resume matrix: a checkpoint of any layout of {1 process, FSDP2 dp=2, CP=2, PP=2} resumes on any other.

Each layout trains the same 4 steps, saving at 2; resumed from step 2 on another layout, steps 3 and 4 have the
losses of a straight run (the data position is counted in samples of the global stream, so a change of the
data-parallel size at the same world size, dp=2 → pp=2, continues with the right samples).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import TESTS

from mm_core.errors import DataError
from mm_core.testing import run_training, spawn_training

PLUGINS = ["mm_core.testing.toy", "cp_toy"]
RUN = ["model.depth=4", "model.heads=2", "model.seq_len=4", "training.train_iters=4", "training.save_interval=2",
       "training.keep_last=0"]
LAYOUTS = {
    "one": (1, []),
    "dp2": (2, ["parallel.fsdp2.enable=true"]),
    "cp2": (2, ["parallel.cp.size=2", "parallel.cp.mode=ulysses"]),
    "pp2": (2, ["parallel.pp.size=2"]),
}
# The pairs that change the data-parallel size at one world size run in the fast suite; the rest of the matrix
# (and the pairs other tests cover fast: dp2 → 1, pp2 → 1, pp2 → pp2) in the slow suite.
FAST = {("dp2", "pp2"), ("cp2", "dp2")}
PAIRS = [pytest.param(saved, resumed, id=f"{saved}-to-{resumed}",
                      marks=() if (saved, resumed) in FAST else pytest.mark.slow)
         for saved in LAYOUTS for resumed in LAYOUTS]


def _train(layout: str, run_dir: Path, *extra: str) -> dict[int, float]:
    world, overrides = LAYOUTS[layout]
    if world == 1:
        return run_training(PLUGINS, run_dir, [*RUN, *overrides, *extra]).losses
    return spawn_training(world, PLUGINS, run_dir, [*RUN, *overrides, *extra], sys_path=[TESTS])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Each layout's run directory, trained when a test first asks for it."""
    root = tmp_path_factory.mktemp("layouts")
    done: dict[str, Path] = {}

    def get(layout: str) -> Path:
        if layout not in done:
            _train(layout, root / layout)
            done[layout] = root / layout
        return done[layout]

    return get


def _from_step_2(source: Path, run_dir: Path) -> None:
    shutil.copytree(source, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_00000004")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[int, float]:
    return _train("one", tmp_path_factory.mktemp("straight"))


@pytest.mark.parametrize(("saved", "resumed"), PAIRS)
def test_a_checkpoint_resumes_on_another_layout_with_the_losses_of_a_straight_run(
        runs, straight, tmp_path, saved, resumed):
    _from_step_2(runs(saved), tmp_path / "run")
    losses = _train(resumed, tmp_path / "run", "training.resume=true")
    assert losses == pytest.approx({3: straight[3], 4: straight[4]}, rel=1e-5)


def test_a_smaller_micro_batch_continues_with_the_same_samples(runs, straight, tmp_path):
    _from_step_2(runs("one"), tmp_path / "run")
    losses = _train("one", tmp_path / "run", "training.resume=true", "training.micro_batch_size=1")
    assert losses == pytest.approx({3: straight[3], 4: straight[4]}, rel=1e-5)


def test_a_batch_that_cannot_reach_the_saved_position_is_refused(runs, tmp_path):
    # 2 steps of 8 samples = 16 consumed; micro-steps of 3 × 1 samples cannot end there, 8 can.
    _from_step_2(runs("one"), tmp_path / "run")
    with pytest.raises(DataError) as info:
        _train("one", tmp_path / "run", "training.resume=true", "training.micro_batch_size=3",
               "training.global_batch_size=9")
    assert str(info.value) == (
        "the train data cannot continue exactly: the checkpoint read 2 samples per micro-step (micro_batch_size × "
        "data-parallel size), this run reads 3, and it stopped after 16 samples of epoch 0; resume with "
        "micro_batch_size × data-parallel size = 2"
    )
