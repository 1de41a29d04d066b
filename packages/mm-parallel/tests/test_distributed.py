"""FSDP2 on 2 and 4 gloo ranks equals one process: losses, gradients, weights, and resume across world sizes."""

from __future__ import annotations

import json
import shutil

import pytest
import workers
from distributed import launch

from mm_core.testing import run_training, toy

OPTIONS = [
    "parallel.fsdp2.ignored_modules=[encoder]",
    "parallel.fsdp2.recompute_modules=['blocks.{1,3}']",
    "parallel.fsdp2.num_to_forward_prefetch=1",
    "parallel.fsdp2.num_to_backward_prefetch=2",
]


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(b[k])) for k in b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One single-process run and the same run on 2 ranks, both saving at steps 3 and 6."""
    root = tmp_path_factory.mktemp("runs")
    single = run_training([toy], root / "one", OPTIONS)
    launch(2, workers.train, str(root / "two.json"), str(root / "two"), OPTIONS)
    two = {int(k): v for k, v in json.loads((root / "two.json").read_text()).items()}
    return root, single.losses, two


def _inspect(tmp_path, world: int, *overrides: str) -> dict:
    launch(world, workers.inspect, str(tmp_path / "report.json"), [*OPTIONS, *overrides])
    return json.loads((tmp_path / "report.json").read_text())


def test_two_ranks_train_like_one_process(runs):
    _, single, two = runs
    assert len(single) == 6
    assert _close(two, single)


@pytest.mark.parametrize("world, extra", [(1, []), (4, ["parallel.fsdp2.sharding_size=2"])])
def test_resume_a_two_rank_checkpoint_on_other_world_sizes(runs, world, extra):
    root, single, _ = runs
    run_dir = root / f"resume{world}"
    shutil.copytree(root / "two", run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_00000006")
    overrides = [*OPTIONS, *extra, "training.resume=true"]
    if world == 1:
        resumed = run_training([toy], run_dir, overrides).losses
    else:
        launch(world, workers.train, str(root / f"resume{world}.json"), str(run_dir), overrides)
        resumed = {int(k): v for k, v in json.loads((root / f"resume{world}.json").read_text()).items()}
    assert _close(resumed, {step: single[step] for step in (4, 5, 6)})


def test_patterns_ignored_and_recompute_shape_the_module_tree(tmp_path):
    report = _inspect(tmp_path, 2, "parallel.fsdp2.enable=true")
    assert report["fsdp"] == ["", "blocks.0", "blocks.1", "blocks.2", "blocks.3"]  # the plugin's plan
    assert report["recompute"] == ["blocks.1", "blocks.3"]
    assert report["plain_params"] == ["encoder.bias", "encoder.weight"]
    assert report["placements"] == ["(Shard(dim=0),)"]
    assert report["gradients_match"]


def test_meta_model_is_sharded_then_loads_pretrained_weights(tmp_path):
    report = _inspect(tmp_path, 2, "model.meta=true", "model.pretrained=true")
    assert report["matches_cpu_model"]
    assert report["gradients_match"]


def test_hsdp_with_patterns_mixed_precision_offload_and_fresh_meta_init(tmp_path):
    report = _inspect(
        tmp_path,
        4,
        "parallel.fsdp2.sharding_size=2",
        "parallel.fsdp2.sub_modules_to_wrap=['blocks.{0-1}', head]",
        "parallel.fsdp2.offload_to_cpu=true",
        "parallel.fsdp2.reshard_after_forward=false",
        "parallel.fsdp2.param_dtype=bf16",
        "model.meta=true",
    )
    assert report["fsdp"] == ["", "blocks.0", "blocks.1", "head"]
    assert report["placements"] == ["(Replicate(), Shard(dim=0))"]
    assert report["sharded_dtypes"] == ["torch.float32"] and report["output_dtype"] == "torch.bfloat16"
    assert report["norm_weights"] == [1.0] and report["scale"] == [0.5, 0.5]  # the toy's init_weights ran
    assert not report["matches_cpu_model"]


def test_a_model_with_its_own_fully_shard_shards_itself(tmp_path):
    report = _inspect(tmp_path, 2, "model.self_sharding=true", "parallel.fsdp2.enable=true")
    assert report["self_sharded"]
    assert report["fsdp"] == ["", "blocks.0", "blocks.2"]
    assert report["gradients_match"]
