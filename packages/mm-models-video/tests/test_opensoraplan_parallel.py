"""opensoraplan1_3 on the engines: CP (Ulysses with Skiparse; ring without), PP and FSDP2 train as one process."""

from __future__ import annotations

import opensoraplan_cp_workers
import pytest
from opensoraplan_testing import osp_config, parallel_run

from mm_core.errors import ConfigError
from mm_models_video.opensoraplan1_3.build import build_model
from mm_models_video.opensoraplan1_3.plugin import parallel_plan
from mm_parallel.context_plan import check_plan


def test_sharded_model_equals_the_whole_one(tmp_path) -> None:
    """Forward and backward of the composite with its CP plan applied: Skiparse spans the ranks' tokens, through
    Ulysses' head exchange or, on a ring, the gathered keys and values."""
    report = opensoraplan_cp_workers.launch(2, tmp_path / "report.json")
    for mode, tokens in (("ulysses", 9), ("ring", 10)):  # 18 tokens over 2 ranks; the ring pads to 20
        assert report[mode]["tokens"] == tokens
        assert report[mode]["out"] < 1e-5 and report[mode]["grad"] < 1e-5, (mode, report[mode])


def test_heads_must_divide_by_the_ranks_that_exchange_them() -> None:
    config = osp_config("parallel.cp.size=8", "parallel.cp.mode=ulysses")
    model = build_model(config.model)
    with pytest.raises(ConfigError, match="4 attention heads over 8 ranks"):
        check_plan(parallel_plan(model, config).cp, config.parallel.cp)
    check_plan(parallel_plan(model, config).cp, osp_config("parallel.cp.size=8", "parallel.cp.mode=ring").parallel.cp)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    return parallel_run(1, tmp_path_factory.mktemp("one"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [["parallel.cp.size=2", "parallel.cp.mode=ulysses"],
     ["parallel.pp.size=2", "model.predictor.pipeline_num_layers=[2,4]"]],
    ids=["ulysses-2", "pp-2"],
)
def test_training_equals_one_process(single, tmp_path, overrides) -> None:
    run = parallel_run(2, tmp_path, *overrides)
    assert run["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "both"),
    [(["parallel.fsdp2.enable=true"], ["model.diffusion.t_sample_method=uniform"]),
     (["parallel.cp.size=2", "parallel.cp.mode=ring"], ["model.predictor.sparse1d=false"]),
     (["parallel.cp.size=2", "parallel.cp.mode=ring"], []),
     (["parallel.pp.size=2", "model.predictor.pipeline_num_layers=[3,3]"], ["model.task=i2v"])],
    ids=["fsdp2-2", "ring-2-dense", "ring-2", "pp-2-i2v"],
)
def test_training_equals_one_process_with(tmp_path, overrides, both) -> None:
    """FSDP2's ranks are two data-parallel ranks: explicit_uniform would give each its own timestep interval.

    Under PP the I2V branches (masked-clip and mask patch embeddings) live on the first stage.
    """
    single = parallel_run(1, tmp_path / "one", *both)
    run = parallel_run(2, tmp_path / "two", *overrides, *both)
    assert run["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)


@pytest.mark.slow
def test_usp_on_four_ranks_equals_one_process(single, tmp_path) -> None:
    """Ulysses 2 inside a ring of 2: the Skiparse layers gather keys and values over all four ranks."""
    run = parallel_run(4, tmp_path, "parallel.cp.size=4", "parallel.cp.mode=usp", "parallel.cp.ulysses_degree=2")
    assert run["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)


@pytest.mark.slow
def test_vae_context_parallelism_trains_like_one_encode(tmp_path) -> None:
    """model.ae.vae_cp_size=2: each CP rank encodes half the clip's frames (halos passed), the same latents."""
    whole = parallel_run(2, tmp_path / "whole", "parallel.cp.size=2", "parallel.cp.mode=ulysses")
    split = parallel_run(2, tmp_path / "split", "parallel.cp.size=2", "parallel.cp.mode=ulysses",
                         "model.ae.vae_cp_size=2")
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert split["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)

