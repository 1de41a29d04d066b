"""wan2_1 with ``parallel.compile``: its transformer blocks compile and train like eager."""

from __future__ import annotations

import pytest
import torch
from wan_testing import QUIET, SMALL_CLIPS

from mm_core.testing import needs_cuda, run_training

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


@needs_cuda
def test_on_cuda_in_bf16_compiled_blocks_train_like_eager(tmp_path):
    cuda = [*RUN, "training.device=cuda", "training.bf16=true", "training.train_iters=4", "training.save_interval=4"]
    eager = run_training(["wan2_1"], tmp_path / "eager", cuda).losses
    compiled = run_training(["wan2_1"], tmp_path / "compiled", [*cuda, "parallel.compile.enable=true"]).losses
    assert all(torch.isfinite(torch.tensor(list(compiled.values()))))
    assert compiled == pytest.approx(eager, rel=2e-2)
