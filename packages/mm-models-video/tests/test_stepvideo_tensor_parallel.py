"""stepvideo with tensor parallelism from its TensorParallelPlan: each block's heads and feed-forward split over tp
ranks train as one process (losses and grad norms), with sequence parallelism and with FSDP2, Ulysses CP and PP;
heads that tp does not divide are one error before training."""

from __future__ import annotations

import pytest
from stepvideo_testing import stepvideo_config, stepvideo_parallel_run

from mm_core.errors import ConfigError
from mm_models_video.stepvideo.build import build_model
from mm_models_video.stepvideo.plugin import parallel_plan
from mm_parallel.tensor_parallel import check_plan

TP2 = ["parallel.tp.size=2"]
SP = "parallel.tp.sequence_parallel=true"


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    return stepvideo_parallel_run(1, tmp_path_factory.mktemp("one"))


# The tiny clip is 3 × 2 × 2 = 12 tokens: 6 per tp rank, 3 per tp rank of a Ulysses pair.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        (2, TP2),
        (2, [*TP2, SP]),
        (4, [*TP2, SP, "parallel.fsdp2.enable=true"]),
        (4, [*TP2, SP, "parallel.cp.size=2", "parallel.cp.mode=ulysses", "parallel.fsdp2.enable=true"]),
        (4, [*TP2, "parallel.pp.size=2"]),
    ],
    ids=["tp-2", "tp-2-sp", "tp-2-sp-fsdp2-2", "tp-2-sp-ulysses-2-fsdp2", "tp-2-pp-2"],
)
def test_tensor_parallel_training_equals_one_process(single, tmp_path, world, overrides) -> None:
    run = stepvideo_parallel_run(world, tmp_path, *overrides)
    assert run["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)


def test_layout_splits_whole_heads_and_sums_the_per_head_norms() -> None:
    config = stepvideo_config()
    plan = parallel_plan(build_model(config.model), config).tp
    block = "predictor.transformer_blocks.{*}"
    assert plan.layout[f"{block}.attn1.wqkv"] == "colwise" and plan.layout[f"{block}.attn2.wkv"] == "colwise_replicated"
    assert set(plan.per_head) == {f"{block}.attn{i}.{n}_norm" for i in (1, 2) for n in "qk"}
    assert plan.gather_outputs == {"predictor.transformer_blocks.1": 1}


def test_heads_must_divide_by_tp_and_by_tp_times_ulysses() -> None:
    """The tiny transformer has 4 heads: tp 8 cannot split them, nor tp 2 × ulysses 4."""
    config = stepvideo_config("parallel.tp.size=8")
    plan = parallel_plan(build_model(config.model), config).tp
    with pytest.raises(ConfigError, match="parallel.tp.size 8 does not divide the model's 4 attention heads"):
        check_plan(plan, config)
    with pytest.raises(ConfigError, match=r"tp.size × Ulysses ranks = 2 × 4 do not divide the model's 4 attention"):
        check_plan(plan, stepvideo_config("parallel.tp.size=2", "parallel.cp.size=4", "parallel.cp.mode=ulysses"))
    check_plan(plan, stepvideo_config("parallel.tp.size=2", "parallel.cp.size=2", "parallel.cp.mode=ulysses"))
