"""Qwen2.5-VL's language model with tensor parallelism (heads, MLP and vocabulary split; loss on split logits)
trains like one process; KV heads that tp does not divide are one error before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mm_core.errors import ConfigError
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import spawn_training
from mm_models_vlm.qwen2_5_vl.plugin import parallel_plan
from mm_parallel.tensor_parallel import check_plan

OVERRIDES = ["training.train_iters=2", "training.save_interval=0", "training.micro_batch_size=2",
             "data.dataset_param.basic_parameters.preprocessing_num_workers=1", "training.clip_grad=0.5"]
# Pipeline parallelism pads every micro-batch to cutoff_len.
CUTOFF = "data.dataset_param.basic_parameters.cutoff_len=128"


def grad_norms(output_dir: Path) -> list[float]:
    return [json.loads(line)["grad_norm"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensor_parallel_language_model_trains_like_one_process(mm_train, tmp_path):
    single = mm_train(["qwen2_5_vl"], *OVERRIDES, output_dir=tmp_path / "one").losses
    losses = spawn_training(2, ["qwen2_5_vl"], tmp_path / "tp", [*OVERRIDES, "parallel.tp.size=2"])
    assert losses == pytest.approx(single, rel=1e-4)
    assert grad_norms(tmp_path / "tp") == pytest.approx(grad_norms(tmp_path / "one"), rel=1e-4)


def test_key_value_heads_must_divide_by_tp(model):
    """The tiny model has 4 heads and 2 KV heads: tp 4 splits the heads but not the KV heads."""
    pm = load_plugins(["qwen2_5_vl"])
    plan = parallel_plan(model, make_config(pm, "run")).tp
    with pytest.raises(ConfigError, match="parallel.tp.size 4 does not divide the model's 2 key/value heads"):
        check_plan(plan, make_config(pm, "run", overrides=["parallel.tp.size=4"]))
    check_plan(plan, make_config(pm, "run", overrides=["parallel.tp.size=2"]))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        (2, ["parallel.tp.sequence_parallel=true"]),
        (4, ["parallel.fsdp2.enable=true"]),
        (4, ["parallel.pp.size=2", CUTOFF]),
        (4, ["parallel.pp.size=2", CUTOFF, "parallel.tp.sequence_parallel=true"]),
    ],
    ids=["tp-2-sp", "tp-2-fsdp2-2", "tp-2-pp-2", "tp-2-sp-pp-2"],
)
def test_tensor_parallel_composes(mm_train, tmp_path, world, overrides):
    """Sequence parallelism (each layer's norms on the token shards, their outputs gathered for attention and MLP);
    tp 2 × FSDP2 over 2 data-parallel ranks; tp 2 × 2 pipeline stages (the tied embedding and lm_head on different
    stages, both split over the vocabulary)."""
    pp = [CUTOFF] if CUTOFF in overrides else []
    single = mm_train(["qwen2_5_vl"], *OVERRIDES, *pp, output_dir=tmp_path / "one").losses
    losses = spawn_training(world, ["qwen2_5_vl"], tmp_path / "tp", [*OVERRIDES, "parallel.tp.size=2", *overrides])
    assert losses == pytest.approx(single, rel=1e-4)
    assert grad_norms(tmp_path / "tp") == pytest.approx(grad_norms(tmp_path / "one"), rel=1e-4)
