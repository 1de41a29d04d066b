"""wan2_1 with tensor parallelism from its TensorParallelPlan: heads and FFN split over tp ranks train as one process,
with sequence parallelism too; heads that tp does not divide are one error before training."""

from __future__ import annotations

import pytest
from parallel_testing import parallel_run
from wan_testing import wan_config

from mm_core.errors import ConfigError
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.plugin import parallel_plan
from mm_parallel.tensor_parallel import check_plan

# 3 × 2 × 3 = 18 tokens per clip: they split over 2 tp ranks, and over a ring of 2 (padded to 20) × 2 tp; Ulysses'
# 9 tokens per cp rank would not divide over tp (one ConfigError).
WIDE = ["data.dataset_param.max_width=48"]
TP2 = ["parallel.tp.size=2"]
SP = "parallel.tp.sequence_parallel=true"
# The blocks compiled (aot_eager: dynamo's graphs without inductor's code generation, quick on CPU).
COMPILE = ["parallel.compile.enable=true", "parallel.compile.backend=aot_eager"]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    return parallel_run(1, tmp_path_factory.mktemp("one"), *WIDE)


@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        pytest.param(2, TP2, marks=pytest.mark.slow),
        (2, [*TP2, SP]),
        pytest.param(4, [*TP2, SP, "parallel.fsdp2.enable=true"], marks=pytest.mark.slow),
        pytest.param(4, [*TP2, SP, "parallel.cp.size=2", "parallel.cp.mode=ring", "parallel.fsdp2.enable=true"],
                     marks=pytest.mark.slow),
        pytest.param(4, [*TP2, "parallel.pp.size=2"], marks=pytest.mark.slow),
        pytest.param(2, [*TP2, SP, *COMPILE], marks=pytest.mark.slow),
    ],
    ids=["tp-2", "tp-2-sp", "tp-2-sp-fsdp2-2", "tp-2-sp-ring-2-fsdp2", "tp-2-pp-2", "tp-2-sp-compile"],
)
def test_tensor_parallel_training_equals_one_process(single, tmp_path, world, overrides) -> None:
    run = parallel_run(world, tmp_path, *WIDE, *overrides)
    assert run["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)


@pytest.mark.slow
def test_i2v_tensor_parallel_training_equals_one_process(tmp_path) -> None:
    """I2V with tp 2 and sequence parallelism: the added image k/v projections split by heads like the text's."""
    single = parallel_run(1, tmp_path / "one", *WIDE, "model.task=i2v")
    run = parallel_run(2, tmp_path / "tp", *WIDE, "model.task=i2v", *TP2, SP)
    assert run["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)


def test_i2v_layout_splits_the_added_image_projections() -> None:
    config = wan_config("model.task=i2v")
    layout = parallel_plan(build_model(config.model), config).tp.layout
    assert {k: v for k, v in layout.items() if "add" in k} == {
        "predictor.blocks.{*}.attn2.add_k_proj": "colwise_replicated",
        "predictor.blocks.{*}.attn2.add_v_proj": "colwise_replicated",
        "predictor.blocks.{*}.attn2.norm_added_k": "sharded_norm",
    }
    assert not any("add" in k for k in parallel_plan(build_model(wan_config().model), wan_config()).tp.layout)


def test_heads_must_divide_by_tp_and_by_tp_times_ulysses() -> None:
    """The tiny transformer has 4 heads: tp 8 cannot split them, nor tp 2 × ulysses 4."""
    config = wan_config("parallel.tp.size=8")
    plan = parallel_plan(build_model(config.model), config).tp
    with pytest.raises(ConfigError, match="parallel.tp.size 8 does not divide the model's 4 attention heads"):
        check_plan(plan, config)
    with pytest.raises(ConfigError, match=r"tp.size × Ulysses ranks = 2 × 4 do not divide the model's 4 attention"):
        check_plan(plan, wan_config("parallel.tp.size=2", "parallel.cp.size=4", "parallel.cp.mode=ulysses"))
    check_plan(plan, wan_config("parallel.tp.size=2", "parallel.cp.size=2", "parallel.cp.mode=ulysses"))
