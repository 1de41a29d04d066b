"""The training loop: loss, accumulation, schedule, logging, evaluation."""

from __future__ import annotations

import json
import math

import pytest

from mm_core.config import wrap
from mm_core.errors import ConfigError
from mm_core.optim import lr_factor
from mm_core.testing import toy
from mm_core.trainer import accumulation_steps

QUIET = ("training.save_interval=0",)


def test_loss_goes_down(mm_train):
    result = mm_train([toy], "training.train_iters=40", "training.lr_decay_style=constant", *QUIET)
    first = sum(result.losses[s] for s in range(1, 6)) / 5
    last = sum(result.losses[s] for s in range(36, 41)) / 5
    assert last < 0.5 * first


def test_gradient_accumulation_matches_one_big_micro_batch(mm_train, tmp_path):
    accumulated = mm_train([toy], "training.micro_batch_size=2", *QUIET, output_dir=tmp_path / "a")
    whole = mm_train([toy], "training.micro_batch_size=8", *QUIET, output_dir=tmp_path / "b")
    for step in accumulated.losses:
        assert accumulated.losses[step] == pytest.approx(whole.losses[step], rel=1e-5, abs=1e-6)


def test_global_batch_must_divide():
    training = wrap({"global_batch_size": 10, "micro_batch_size": 4})
    expected = "global_batch_size 10 is not divisible by micro_batch_size × data-parallel size = 4 × 1"
    with pytest.raises(ConfigError, match=expected):
        accumulation_steps(training, 1)
    assert accumulation_steps(wrap({"global_batch_size": 16, "micro_batch_size": 2}), 4) == 2


@pytest.mark.parametrize(
    ("style", "step", "expected"),
    [("constant", 50, 1.0), ("linear", 55, 0.5), ("cosine", 55, 0.5), ("cosine", 100, 0.0), ("linear", 4, 0.5)],
)
def test_lr_schedule_shapes(style, step, expected):
    training = wrap({"lr": 1.0, "min_lr": 0.0, "lr_warmup_iters": 10, "lr_decay_style": style,
                     "lr_decay_iters": None, "train_iters": 100})
    assert lr_factor(step, training) == pytest.approx(expected, abs=1e-9)


def test_cosine_decays_to_min_lr():
    training = wrap({"lr": 1.0, "min_lr": 0.1, "lr_warmup_iters": 0, "lr_decay_style": "cosine",
                     "lr_decay_iters": 10, "train_iters": 20})
    assert lr_factor(10, training) == pytest.approx(0.1)
    assert lr_factor(15, training) == pytest.approx(0.1)
    assert lr_factor(5, training) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_metrics_jsonl_has_one_record_per_logged_step(mm_train):
    result = mm_train([toy], "training.train_iters=6", "logging.log_interval=2", *QUIET)
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    for r in records:
        assert {"loss", "lr", "grad_norm", "step_s", "samples_per_s", "tokens_per_s", "peak_mem_gib"} <= set(r)
        assert r["loss"] == pytest.approx(result.losses[r["step"]])


def test_log_line_shows_progress(mm_train, capsys):
    mm_train([toy], "training.train_iters=2", *QUIET)
    out = capsys.readouterr().out
    assert "step 2/2 | loss " in out
    assert "samples/s" in out and "tokens/s" in out and "mem " in out


def test_evaluation_runs_every_interval(mm_train):
    result = mm_train([toy], "training.train_iters=4", "training.eval_interval=2",
                      "training.eval_iters=3", *QUIET)
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if "valid_loss" in r]
    assert [r["step"] for r in valid] == [2, 4]
    assert all(r["valid_loss"] > 0 for r in valid)


def test_tensorboard_scalars_are_written(mm_train):
    pytest.importorskip("tensorboard")
    result = mm_train([toy], "training.train_iters=2", "logging.tensorboard=true", *QUIET)
    assert list((result.output_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_diverging_loss_stops_with_a_clear_error(mm_train):
    from mm_core.errors import MMError

    with pytest.raises(MMError, match="training diverged"):
        mm_train([toy], "training.lr=1e30", "training.clip_grad=0", "training.train_iters=30", *QUIET)


def _poisoned(steps: set[int], where: str):
    """A plugin over the toy whose loss (``where="loss"``) or gradients (``"grad"``) are NaN on ``steps``.

    The toy's default run takes 4 micro-batches per step, so call ``n`` belongs to step ``n // 4 + 1``.
    """
    import types

    from mm_core import hookimpl

    calls = []

    def loss_func(output, batch, runtime):
        loss, metrics = toy.loss_func(output=output, batch=batch, runtime=runtime)
        calls.append(None)
        if (len(calls) - 1) // 4 + 1 in steps:
            # The NaN is in the value, or only in the gradient: d sqrt(u) at u = 0 is inf, times 0.
            loss = loss * math.nan if where == "loss" else loss + (output.sum() * 0).sqrt()
        return loss, metrics

    module = types.ModuleType("poisoned")
    module.loss_func = hookimpl(loss_func)
    return module


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_a_nonfinite_step_skips_its_update_and_training_goes_on(mm_train, tmp_path, capsys, where):
    straight = mm_train([toy], *QUIET, output_dir=tmp_path / "straight")
    skipped = mm_train([toy, _poisoned({3}, where)], "training.skip_nonfinite_steps=1", *QUIET,
                       output_dir=tmp_path / "skipped")
    out = capsys.readouterr().out
    assert sorted(skipped.losses) == [1, 2, 3, 4, 5, 6]
    assert [skipped.losses[s] for s in (1, 2)] == [straight.losses[s] for s in (1, 2)]
    what = f"loss {'nan' if where == 'loss' else skipped.losses[3]}, grad norm nan"
    assert f"step 3: {what} is not finite: update skipped (1 in a row, at most 1)" in out
    # No update at step 3: step 4 sees the weights of step 2, so its loss differs from the straight run's.
    assert math.isfinite(skipped.losses[4]) and skipped.losses[4] != straight.losses[4]


def test_more_nonfinite_steps_in_a_row_than_allowed_stop_naming_the_step_and_the_last_checkpoint(mm_train):
    from mm_core.errors import MMError

    with pytest.raises(MMError) as info:
        mm_train([toy, _poisoned({4, 5}, "loss")], "training.skip_nonfinite_steps=1", "training.save_interval=3")
    assert str(info.value).startswith("loss nan, grad norm nan at step 5: training diverged (2 non-finite step(s) in "
                                      "a row, training.skip_nonfinite_steps is 1); the last good checkpoint is ")
    assert str(info.value).endswith("checkpoints/step_00000003")
    with pytest.raises(MMError, match=r"^loss nan, grad norm nan at step 1: training diverged \(1 non-finite "
                                      r"step\(s\) in a row, training.skip_nonfinite_steps is 0\); no checkpoint "
                                      r"was saved$"):
        mm_train([toy, _poisoned({1}, "loss")], *QUIET)


def test_reported_flops_give_tflops_and_mfu(mm_train):
    import types

    from mm_core import hookimpl

    def loss_func(output, batch, runtime):
        loss = ((output.float() - batch["y"]) ** 2).mean()
        return loss, {"flops": 1e12}

    flops = types.ModuleType("flops_plugin")
    flops.loss_func = hookimpl(loss_func)
    result = mm_train([toy, flops], "training.train_iters=2", "logging.peak_tflops=1000.0", *QUIET)
    record = json.loads((result.output_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["tflops"] == pytest.approx(4e12 / record["step_s"] / 1e12)  # 4 micro-batches
    assert record["mfu"] == pytest.approx(record["tflops"] / 1000.0)


def test_a_loss_per_sample_is_one_error_naming_its_shape(mm_train):
    import types

    from mm_core import hookimpl
    from mm_core.errors import PluginError

    def loss_func(output, batch, runtime):
        return (output.float() - batch["y"]) ** 2, {}

    per_sample = types.ModuleType("per_sample_loss")
    per_sample.loss_func = hookimpl(loss_func)
    with pytest.raises(PluginError, match=r"got a tensor of shape \[2, 1, 2\]: reduce it, e\.g\. \.mean\(\)"):
        mm_train([toy, per_sample], "training.train_iters=1", *QUIET)


@pytest.mark.parametrize("key", ["micro_batch_size", "global_batch_size"])
def test_a_batch_size_below_one_is_one_error(mm_train, key):
    with pytest.raises(ConfigError, match=f"training.{key} must be at least 1, got 0"):
        mm_train([toy], f"training.{key}=0", *QUIET)
