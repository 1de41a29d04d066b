"""The CP engine from config: training with parallel.cp equals one process, alone and with FSDP2."""

from __future__ import annotations

from pathlib import Path

import pytest

from mm_core.testing import run_training, spawn_training

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[int, float]:
    return run_training(["cp_toy_plugin"], tmp_path_factory.mktemp("one"), ["training.device=cpu"]).losses


@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        (2, ["parallel.cp.size=2", "parallel.cp.mode=ring"]),
        (4, ["parallel.cp.size=2", "parallel.cp.mode=ulysses", "parallel.fsdp2.enable=true"]),
        (4, ["parallel.cp.size=4", "parallel.cp.mode=usp", "parallel.cp.ulysses_degree=2"]),
        pytest.param(4, ["parallel.cp.size=4", "parallel.cp.mode=ring", "parallel.cp.window_size=2"],
                     marks=pytest.mark.slow),
    ],
    ids=["ring-ddp", "ulysses-fsdp2", "usp", "double-ring"],
)
def test_context_parallel_training_equals_one_process(single, tmp_path, world, overrides):
    losses = spawn_training(world, ["cp_toy_plugin"], tmp_path, overrides, sys_path=[TESTS])
    assert losses == pytest.approx(single, rel=1e-5)
