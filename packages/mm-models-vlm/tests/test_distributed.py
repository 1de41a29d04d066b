"""Two gloo processes (data-parallel, shared tokenization cache) train exactly like one, with DDP and with FSDP2."""

from __future__ import annotations

import pytest

from mm_core.testing import spawn_training

OVERRIDES = ["training.train_iters=2", "training.save_interval=0", "training.micro_batch_size=2",
             "data.dataset_param.basic_parameters.preprocessing_num_workers=1"]


@pytest.mark.parametrize("engine", [[], ["parallel.fsdp2.enable=true"]], ids=["ddp", "fsdp2"])
def test_two_processes_match_one(mm_train, tmp_path, engine):
    single = mm_train(["qwen2_5_vl"], *OVERRIDES, output_dir=tmp_path / "one").losses
    double = spawn_training(2, ["qwen2_5_vl"], tmp_path / "two", [*OVERRIDES, *engine])
    assert double == pytest.approx(single, rel=1e-4)
