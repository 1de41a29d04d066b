"""The TP engine from config: the toy trained with parallel.tp (with and without sequence parallelism) equals one
process in losses and gradient norms; the config takes Megatron's flag names; what cannot work is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mm_core import ParallelPlan, TensorParallelPlan
from mm_core.config import Config
from mm_core.errors import ConfigError, PluginError
from mm_core.plugins import load_plugins, make_config
from mm_core.runtime import mesh_shape
from mm_core.testing import run_training, spawn_training, toy
from mm_parallel.tensor_parallel import apply_tensor_parallel, check_plan

TESTS = Path(__file__).parent
# Four tokens per sample, so that they split over two tp ranks; clipping at 0.05 so that the clip acts.
TOY = ["model.seq_len=4", "model.depth=2", "training.train_iters=4", "training.global_batch_size=4",
       "training.micro_batch_size=2", "training.save_interval=0", "training.clip_grad=0.05"]


def grad_norms(output_dir: Path) -> list[float]:
    lines = Path(output_dir, "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["grad_norm"] for line in lines if "grad_norm" in line]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[dict[int, float], list[float]]:
    out = tmp_path_factory.mktemp("one")
    return run_training(["mm_core.testing.toy"], out, TOY).losses, grad_norms(out)


@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        pytest.param(2, ["parallel.tp.size=2"], marks=pytest.mark.slow),
        (2, ["parallel.tensor-model-parallel-size=2", "parallel.sequence-parallel=true"]),
        pytest.param(4, ["parallel.tp.size=2", "parallel.tp.sequence_parallel=true", "parallel.fsdp2.enable=true"],
                     marks=pytest.mark.slow),
        pytest.param(4, ["parallel.tp.size=2", "parallel.tp.sequence_parallel=true", "parallel.cp.size=2",
                         "parallel.cp.mode=ring", "parallel.fsdp2.enable=true"], marks=pytest.mark.slow),
        pytest.param(4, ["parallel.tp.size=2", "parallel.tp.sequence_parallel=true", "parallel.pp.size=2",
                         "training.micro_batch_size=1"], marks=pytest.mark.slow),
    ],
    ids=["tp", "tp-sp-megatron-names", "tp-sp-fsdp2", "tp-sp-cp-fsdp2", "tp-sp-pp"],
)
def test_tensor_parallel_training_equals_one_process(single, tmp_path, world, overrides):
    losses = spawn_training(world, ["mm_core.testing.toy", "tp_toy"], tmp_path, [*TOY, *overrides], sys_path=[TESTS])
    assert losses == pytest.approx(single[0], rel=1e-5)
    assert grad_norms(tmp_path) == pytest.approx(single[1], rel=1e-5)


def test_megatron_names_set_the_tp_keys_and_must_agree_with_them(tmp_path):
    pm = load_plugins(["mm_core.testing.toy"])
    overrides = ["parallel.tensor-model-parallel-size=4", "parallel.tp.sequence-parallel=true"]
    assert make_config(pm, "run", overrides=overrides).parallel.tp == {"size": 4, "sequence_parallel": True}
    both = tmp_path / "run.yaml"
    both.write_text("parallel:\n  tensor-model-parallel-size: 2\n  tp: {size: 4}\n")
    with pytest.raises(ConfigError, match=r"parallel.tensor-model-parallel-size \(2\) and parallel.tp.size \(4\) "
                                          "disagree; give one"):
        make_config(pm, "run", files=[both])


def test_the_world_must_divide_by_the_tp_size():
    with pytest.raises(ConfigError, match=r"world size 6 is not divisible by pp.size × cp.size × tp.size = 1 × 2 × 4"):
        mesh_shape(Config({"parallel": {"cp": {"size": 2}, "tp": {"size": 4}}}), 6)
    assert mesh_shape(Config({"parallel": {"tp": {"size": 2}}}), 8)["dp_shard"] == 1


def _config(tp: int = 2, cp: int = 1, mode: str = "ulysses", sp: bool = False) -> Config:
    pm = load_plugins(["mm_core.testing.toy"])
    return make_config(pm, "run", overrides=[f"parallel.tp.size={tp}", f"parallel.cp.size={cp}",
                                             f"parallel.cp.mode={mode}", f"parallel.tp.sequence_parallel={sp}"])


def test_tp_asked_of_a_plugin_without_a_tp_layout_is_one_error():
    with pytest.raises(PluginError, match="parallel.tp.size 2 needs the plugin's parallel_plan to give tp"):
        apply_tensor_parallel(toy.ToyModel(dim=8, depth=1), ParallelPlan(), _config(), runtime=None)


@pytest.mark.parametrize(
    ("plan", "config", "message"),
    [
        (TensorParallelPlan(layout={"a": "colwise"}, heads=6), _config(tp=4),
         "parallel.tp.size 4 does not divide the model's 6 attention heads"),
        (TensorParallelPlan(layout={"a": "colwise"}, heads=8, kv_heads=2), _config(tp=4),
         "parallel.tp.size 4 does not divide the model's 2 key/value heads"),
        (TensorParallelPlan(layout={"a": "colwise"}, heads=8), _config(tp=2, cp=8),
         r"parallel.tp.size × Ulysses ranks = 2 × 8 do not divide the model's 8 attention heads"),
    ],
    ids=["heads", "kv-heads", "heads-by-tp-times-cp"],
)
def test_heads_must_divide_by_tp_and_by_tp_times_ulysses(plan, config, message):
    with pytest.raises(ConfigError, match=message):
        check_plan(plan, config)
    check_plan(plan, _config(tp=2, cp=2, mode="ring"))


def test_a_plan_field_of_the_wrong_kind_fails_where_the_plugin_builds_it():
    with pytest.raises(PluginError, match=r"TensorParallelPlan.layout\['fc1'\] is 'column'; styles are colwise"):
        TensorParallelPlan(layout={"fc1": "column"})
    with pytest.raises(PluginError, match="ParallelPlan.tp must be a TensorParallelPlan, got dict"):
        ParallelPlan(tp={"fc1": "colwise"})


@pytest.mark.parametrize(
    ("first", "then"),
    [pytest.param(2, 1, marks=pytest.mark.slow), pytest.param(1, 2, marks=pytest.mark.slow)],
    ids=["tp2-to-tp1", "tp1-to-tp2"],
)
def test_a_checkpoint_resumes_on_another_tp_size_exactly(single, tmp_path, first, then):
    """Two steps at one tp size, saved (DCP), then --resume at the other: steps 3 and 4 are those of one run.

    The LR schedule spans the 4 steps of the whole run in both parts (lr_decay_iters).
    """

    def train(tp: int, *overrides: str) -> dict[int, float]:
        args = [*TOY, "training.lr_decay_iters=4", f"parallel.tp.size={tp}", "parallel.tp.sequence_parallel=true",
                *overrides]
        if tp == 1:
            return run_training(["mm_core.testing.toy", "tp_toy"], tmp_path, args).losses
        return spawn_training(tp, ["mm_core.testing.toy", "tp_toy"], tmp_path, args, sys_path=[TESTS])

    train(first, "training.train_iters=2", "training.save_interval=2")
    resumed = train(then, "training.resume=true")
    assert sorted(resumed) == [3, 4]
    assert resumed == pytest.approx({step: single[0][step] for step in (3, 4)}, rel=1e-5)
