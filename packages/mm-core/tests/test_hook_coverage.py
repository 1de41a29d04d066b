"""Every hookspec must be called by some test: mm's pytest plugin records the calls and fails a whole run without."""

from __future__ import annotations

from mm_core import pytest_plugin
from mm_core.plugins import load_plugins
from mm_core.testing import toy


def test_a_training_run_records_the_hooks_it_calls(mm_train):
    before = set(pytest_plugin.called_hooks)
    pytest_plugin.called_hooks.clear()
    try:
        mm_train([toy], "training.train_iters=1", "training.save_interval=0")
        called = set(pytest_plugin.called_hooks)
    finally:
        pytest_plugin.called_hooks.update(before)
    assert {"default_config", "model_provider", "parallel_plan", "parallelize_model", "datasets_provider",
            "get_batch", "forward_step", "loss_func", "after_training"} <= called
    assert "inference" not in called


def test_a_hook_only_named_is_not_recorded():
    before = set(pytest_plugin.called_hooks)
    pytest_plugin.called_hooks.clear()
    try:
        pm = load_plugins([toy])
        assert pm.hook.inference is not None  # looked up, never called
        called = set(pytest_plugin.called_hooks)
    finally:
        pytest_plugin.called_hooks.update(before)
    assert "inference" not in called


def test_the_specs_are_every_hookspec():
    assert {"model_provider", "parallel_plan", "register_converters", "extract_features"} <= pytest_plugin.SPECS
