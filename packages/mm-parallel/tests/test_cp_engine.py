"""The CP engine from config: training with parallel.cp equals the toy's plain SDPA in one process, alone and with
FSDP2, whether the engine splits where the plan says or the forward splits itself; a plan that does not fit the
model is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from mm_core import ContextParallelPlan
from mm_core.config import Config
from mm_core.errors import ConfigError, PluginError
from mm_core.testing import run_training, spawn_training, toy
from mm_parallel.context_plan import check_plan, plan_modules

TESTS = Path(__file__).parent
# Two blocks attending causally with 4 heads over 13 tokens (not a multiple of the cp sizes: the split pads).
SEQUENCES = ["model.heads=4", "model.seq_len=13", "model.depth=2", "training.train_iters=4",
             "training.global_batch_size=4", "training.micro_batch_size=1", "training.save_interval=0"]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[int, float]:
    return run_training(["mm_core.testing.toy"], tmp_path_factory.mktemp("one"), SEQUENCES).losses


@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        (2, ["parallel.cp.size=2", "parallel.cp.mode=ring"]),
        (4, ["parallel.cp.size=2", "parallel.cp.mode=ulysses", "parallel.fsdp2.enable=true"]),
        (4, ["parallel.cp.size=4", "parallel.cp.mode=usp", "parallel.cp.ulysses_degree=2", "model.split=forward"]),
        pytest.param(4, ["parallel.cp.size=4", "parallel.cp.mode=ring", "parallel.cp.window_size=2"],
                     marks=pytest.mark.slow),
    ],
    ids=["ring-ddp", "ulysses-fsdp2", "usp-split-in-forward", "double-ring"],
)
def test_context_parallel_training_equals_one_process(single, tmp_path, world, overrides):
    losses = spawn_training(world, ["mm_core.testing.toy", "cp_toy"], tmp_path, [*SEQUENCES, *overrides],
                            sys_path=[TESTS])
    assert losses == pytest.approx(single, rel=1e-5)


def test_a_plan_path_that_names_no_module_is_a_plugin_error():
    plan = ContextParallelPlan(split_inputs={"encoder": 1}, gather_outputs={"decoder": 1})
    with pytest.raises(PluginError, match="^ContextParallelPlan.gather_outputs names 'decoder', which is no module"):
        plan_modules(toy.ToyModel(dim=8, depth=1), plan)


@pytest.mark.parametrize(
    ("cp", "message"),
    [
        ({"size": 8, "mode": "ulysses"}, "splits the 4 attention heads over 8 ranks: pick a cp size dividing 4"),
        ({"size": 6, "mode": "usp", "ulysses_degree": 3}, "over 3 ranks: pick a ulysses_degree dividing 4"),
    ],
)
def test_the_plan_heads_must_divide_by_the_ranks_that_exchange_them(cp, message):
    plan = ContextParallelPlan(split_outputs={"encoder": 1}, heads=4)
    with pytest.raises(ConfigError, match=message):
        check_plan(plan, Config({"ulysses_degree": None, **cp}))
    check_plan(plan, Config({"size": 8, "mode": "ring", "ulysses_degree": None}))


def test_plan_heads_must_be_a_positive_count():
    with pytest.raises(PluginError, match="ContextParallelPlan.heads must be a positive number of heads, got 0"):
        ContextParallelPlan(heads=0)


def test_a_forward_that_gathers_what_it_never_split_is_one_plugin_error(tmp_path):
    with pytest.raises(Exception, match="gather_sequence under context parallelism \\(parallel.cp.size 2\\) but "
                                        "nothing was split in this forward: split the sequence first"):
        spawn_training(2, ["mm_core.testing.toy", "cp_toy"], tmp_path,
                       [*SEQUENCES, "parallel.cp.size=2", "model.split=forgotten"], sys_path=[TESTS])
