"""opensoraplan1_3 with tensor parallelism from its TensorParallelPlan: heads (dense and Skiparse attention) and FFN
split over tp ranks train as one process, with sequence parallelism too; heads that tp (× Ulysses' ranks) does not
divide are one error before training."""

from __future__ import annotations

import pytest
from opensoraplan_testing import osp_config, parallel_run

from mm_core.errors import ConfigError
from mm_models_video.opensoraplan1_3.build import build_model
from mm_models_video.opensoraplan1_3.plugin import parallel_plan
from mm_parallel.tensor_parallel import check_plan

# 18 tokens per clip: 9 per tp rank under SP; a ring of 2 pads them to 20, 5 per rank of tp 2 × ring 2. Ulysses'
# 9 tokens per cp rank do not divide over tp, so tp × Ulysses runs without SP.
TP2 = ["parallel.tp.size=2"]
SP = "parallel.tp.sequence_parallel=true"
# Affine block norms: under sequence parallelism their weights meet the token shards.
AFFINE = "model.predictor.norm_elementwise_affine=true"


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    return parallel_run(1, tmp_path_factory.mktemp("one"), AFFINE)


@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        (2, [*TP2, SP]),
        pytest.param(2, TP2, marks=pytest.mark.slow),
        pytest.param(4, [*TP2, "parallel.cp.size=2", "parallel.cp.mode=ulysses", "parallel.fsdp2.enable=true"],
                     marks=pytest.mark.slow),
        pytest.param(4, [*TP2, SP, "parallel.cp.size=2", "parallel.cp.mode=ring", "parallel.fsdp2.enable=true"],
                     marks=pytest.mark.slow),
        pytest.param(4, [*TP2, SP, "parallel.pp.size=2", "model.predictor.pipeline_num_layers=[3,3]"],
                     marks=pytest.mark.slow),
    ],
    ids=["tp-2-sp", "tp-2", "tp-2-ulysses-2-fsdp2", "tp-2-sp-ring-2-fsdp2", "tp-2-sp-pp-2"],
)
def test_tensor_parallel_training_equals_one_process(single, tmp_path, world, overrides) -> None:
    run = parallel_run(world, tmp_path, AFFINE, *overrides)
    assert run["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)


@pytest.mark.slow
def test_i2v_tensor_parallel_training_equals_one_process(tmp_path) -> None:
    """I2V with tp 2 and SP: the masked-clip and mask patch embeddings stay replicated before the split blocks."""
    single = parallel_run(1, tmp_path / "one", AFFINE, "model.task=i2v")
    run = parallel_run(2, tmp_path / "tp", AFFINE, "model.task=i2v", *TP2, SP)
    assert run["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)


def test_heads_must_divide_by_tp_and_by_tp_times_ulysses() -> None:
    """The tiny transformer has 4 heads: tp 8 cannot split them, nor tp 2 × ulysses 4."""
    config = osp_config("parallel.tp.size=8")
    plan = parallel_plan(build_model(config.model), config).tp
    with pytest.raises(ConfigError, match="parallel.tp.size 8 does not divide the model's 4 attention heads"):
        check_plan(plan, config)
    with pytest.raises(ConfigError, match=r"tp.size × Ulysses ranks = 2 × 4 do not divide the model's 4 attention"):
        check_plan(plan, osp_config("parallel.tp.size=2", "parallel.cp.size=4", "parallel.cp.mode=ulysses"))
    check_plan(plan, osp_config("parallel.tp.size=2", "parallel.cp.size=2", "parallel.cp.mode=ulysses"))
