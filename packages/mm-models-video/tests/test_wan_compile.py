"""wan2_1 with ``parallel.compile``: its transformer blocks compile and train like eager."""

from __future__ import annotations

import pytest
from wan_testing import QUIET, SMALL_CLIPS

from mm_core.testing import run_training

RUN = [
    *SMALL_CLIPS,
    *QUIET,
    "training.micro_batch_size=2",
    "training.global_batch_size=2",
    "training.train_iters=3",
    "training.save_interval=3",
    "parallel.fsdp2.recompute_modules=['predictor.blocks.{*}']",
]


@pytest.mark.parametrize(
    "backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]
)
def test_compiled_blocks_train_like_eager(tmp_path, backend):
    eager = run_training(["wan2_1"], tmp_path / "eager", RUN).losses
    compiled = run_training(
        ["wan2_1"], tmp_path / backend, [*RUN, "parallel.compile.enable=true", f"parallel.compile.backend={backend}"]
    ).losses
    assert compiled == pytest.approx(eager, rel=1e-5)
