"""stepvideo under the engines: FSDP2, context parallelism (Ulysses, ring) from its ContextParallelPlan and pipeline
parallelism from its PipelinePlan train as one process does (per-step losses and grad norms, 2 gloo ranks)."""

from __future__ import annotations

import pytest
from stepvideo_testing import stepvideo_parallel_run


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    return stepvideo_parallel_run(1, tmp_path_factory.mktemp("one"))


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(["parallel.cp.size=2", "parallel.cp.mode=ulysses"], id="ulysses-2"),
        pytest.param(["parallel.cp.size=2", "parallel.cp.mode=ring"], id="ring-2", marks=pytest.mark.slow),
        # The pipeline sets its stages' modules to train one by one: the text encoders must stay in eval (BERT's
        # dropout made the first stage's CLIP features differ, about 1% in the losses).
        pytest.param(["parallel.pp.size=2"], id="pp-2", marks=pytest.mark.slow),
        pytest.param(["parallel.fsdp2.enable=true"], id="fsdp2-2", marks=pytest.mark.slow),
    ],
)
def test_two_processes_train_as_one(single, tmp_path, overrides) -> None:
    run = stepvideo_parallel_run(2, tmp_path, *overrides)
    assert run["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)
