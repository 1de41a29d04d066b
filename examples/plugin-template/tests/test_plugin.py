"""The plugin's tests, with the fixtures mm-core installs for pytest (mm_train, mm_pm): run `pytest` here."""

from __future__ import annotations

import pytest

from mm_core import ConfigError
from mm_core.plugins import hooks_of, load_plugins
from mm_core.testing import spawn_training

PLUGIN = "plugin_template"  # the entry point name in pyproject.toml
QUICK = ["logging.progress_bar=false", "training.save_interval=0", "training.eval_interval=0"]


def test_loss_goes_down(mm_train):
    result = mm_train([PLUGIN], *QUICK, "training.train_iters=60")  # on the CPU, in a temp dir
    losses = [result.losses[step] for step in sorted(result.losses)]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10


@pytest.mark.parametrize("engine", [[], ["parallel.fsdp2.enable=true"]], ids=["ddp", "fsdp2"])
def test_two_processes_match_one(mm_train, tmp_path, engine):
    run = [*QUICK, "training.train_iters=3"]
    single = mm_train([PLUGIN], *run, output_dir=tmp_path / "one").losses
    # 2 gloo processes, each taking half of every global batch of 16; DDP, or FSDP2 sharding encoder.layers.
    double = spawn_training(2, [PLUGIN], tmp_path / "two", [*run, "training.micro_batch_size=8", *engine])
    assert double == pytest.approx(single, rel=1e-5)


def test_resume_continues_the_same_run(mm_train, tmp_path):
    straight = mm_train([PLUGIN], *QUICK, "training.train_iters=6", output_dir=tmp_path / "a").losses
    mm_train([PLUGIN], *QUICK, "training.train_iters=3", "training.save_interval=3", output_dir=tmp_path / "b")
    resumed = mm_train([PLUGIN], *QUICK, "training.train_iters=6", "training.resume=true", output_dir=tmp_path / "b")
    assert resumed.losses == pytest.approx({k: v for k, v in straight.items() if k > 3}, rel=1e-5)


def test_hooks_and_config_errors(mm_pm, mm_train):
    load_plugins([PLUGIN], pm=mm_pm)
    assert "parallel_plan" in hooks_of(mm_pm, mm_pm.get_plugin(PLUGIN))
    with pytest.raises(ConfigError, match="model.image_size 30 must be a multiple of model.patch_size 8"):
        mm_train([PLUGIN], *QUICK, "model.image_size=30")
