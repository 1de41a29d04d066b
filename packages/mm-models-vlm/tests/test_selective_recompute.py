"""Selective recompute of Qwen2.5-VL's decoder layers and vision blocks trains exactly like no recompute."""

from __future__ import annotations

OVERRIDES = ["training.train_iters=3", "training.save_interval=0",
             "data.dataset_param.basic_parameters.preprocessing_num_workers=1"]
RECOMPUTE = "parallel.fsdp2.recompute_modules=['model.language_model.layers.{*}','model.visual.blocks.{*}']"


def test_selective_recompute_gives_the_losses_of_no_recompute(mm_train, tmp_path):
    plain = mm_train(["qwen2_5_vl"], *OVERRIDES, output_dir=tmp_path / "plain").losses
    selective = mm_train(["qwen2_5_vl"], *OVERRIDES, RECOMPUTE, output_dir=tmp_path / "selective").losses
    assert len(plain) == 3 and selective == plain
