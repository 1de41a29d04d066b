"""wan2_1 with context parallelism from its ContextParallelPlan: the tokens split over cp ranks train as one process."""

from __future__ import annotations

import pytest
import torch
import wan_cp_workers
from parallel_testing import parallel_run
from wan_testing import wan_config

from mm_core.errors import ConfigError
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.plugin import parallel_plan
from mm_parallel.context_plan import check_plan

# 3 × 2 × 3 = 18 tokens per clip: padded to 20 for a ring of 2 and for 4 ranks, so padding is exercised too.
WIDE = ["data.dataset_param.max_width=48"]
CP2_RING = ["parallel.cp.size=2", "parallel.cp.mode=ring"]
# Recomputed blocks split their input again in backward: the split must not depend on anything but the input.
RECOMPUTE = "parallel.fsdp2.recompute_modules=['predictor.blocks.{*}']"
COMPILE = ["parallel.compile.enable=true", "parallel.compile.backend=aot_eager"]


@pytest.mark.parametrize("task", ["t2v", pytest.param("i2v", marks=pytest.mark.slow)])
def test_sharded_transformer_equals_the_whole_one(tmp_path, task) -> None:
    report = wan_cp_workers.launch(2, tmp_path / "report.json", task)
    for mode in ("ulysses", "ring"):
        assert report[mode]["tokens"] == {"ulysses": 9, "ring": 10}[mode]  # 18 tokens; the ring pads to 20
        assert report[mode]["out"] < 1e-5 and report[mode]["grad"] < 1e-5, (mode, report[mode])


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    return parallel_run(1, tmp_path_factory.mktemp("one"), *WIDE)


@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        (2, ["parallel.cp.size=2", "parallel.cp.mode=ulysses"]),
        (2, [*CP2_RING, "training.save_interval=3"]),
        pytest.param(4, ["parallel.cp.size=4", "parallel.cp.mode=ulysses"], marks=pytest.mark.slow),
        pytest.param(
            4, ["parallel.cp.size=4", "parallel.cp.mode=usp", "parallel.cp.ulysses_degree=2"], marks=pytest.mark.slow
        ),
        pytest.param(4, [*CP2_RING, "parallel.fsdp2.enable=true", RECOMPUTE], marks=pytest.mark.slow),
        pytest.param(2, [*CP2_RING, RECOMPUTE, *COMPILE], marks=pytest.mark.slow),
    ],
    ids=["ulysses-2", "ring-2", "ulysses-4", "usp-4", "ring-2-fsdp2-2", "ring-2-compile"],
)
def test_context_parallel_training_equals_one_process(single, tmp_path, world, overrides) -> None:
    run = parallel_run(world, tmp_path, *WIDE, *overrides)
    assert run["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)
    if "training.save_interval=3" in overrides:
        saved = tmp_path / "checkpoints" / "step_00000003"
        data = torch.load(saved / "trainer_state.pt", weights_only=False)["data"]
        # Rank 0 read 12 micro-batches of one sample for the cp group (rank 1 receives them): 12 of the stream.
        assert (data["position"], data["samples_per_batch"]) == (12, 1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [["parallel.cp.size=2", "parallel.cp.mode=ulysses"], [*CP2_RING, "parallel.fsdp2.enable=true", RECOMPUTE]],
    ids=["ulysses-2", "ring-2-fsdp2-2"],
)
def test_i2v_context_parallel_training_equals_one_process(tmp_path, overrides) -> None:
    """I2V: the clip's tokens (noise, mask and first-frame latents) are split; the CLIP tokens stay whole."""
    world = 4 if "parallel.fsdp2.enable=true" in overrides else 2
    single = parallel_run(1, tmp_path / "one", *WIDE, "model.task=i2v")
    run = parallel_run(world, tmp_path / "cp", *WIDE, "model.task=i2v", *overrides)
    assert run["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["parallel.cp.size=8", "parallel.cp.mode=ulysses"], "4 attention heads over 8 ranks: pick a cp size"),
        (["parallel.cp.size=6", "parallel.cp.mode=usp", "parallel.cp.ulysses_degree=3"], "over 3 ranks"),
    ],
)
def test_heads_must_divide_by_the_ranks_that_exchange_them(overrides, message) -> None:
    """The plan gives the transformer's heads; the engine checks them against parallel.cp before training."""
    config = wan_config(*overrides)
    plan = parallel_plan(build_model(config.model), config).cp
    with pytest.raises(ConfigError, match=message):
        check_plan(plan, config.parallel.cp)
    check_plan(plan, wan_config("parallel.cp.size=8", "parallel.cp.mode=ring").parallel.cp)
