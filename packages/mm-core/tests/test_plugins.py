"""Plugin loading: entry points or module paths, stacking, and the errors a user meets."""

from __future__ import annotations

import types

import pytest
import torch

from mm_core import hookimpl
from mm_core.checkpoint import load_model_state
from mm_core.errors import PluginError
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import toy


def _module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def test_module_path_plugin_loads_and_implements_hooks(mm_pm):
    pm = load_plugins(["mm_core.testing.toy"], pm=mm_pm)
    assert pm.get_plugin("mm_core.testing.toy") is toy
    assert pm.hook.model_provider.get_hookimpls()[-1].plugin is toy


def test_unknown_plugin_is_one_clear_error():
    with pytest.raises(PluginError, match=r"unknown plugin 'no_such_plugin'.*installed: "):
        load_plugins(["no_such_plugin"])


def test_plugin_with_broken_import_names_the_cause(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("import not_a_real_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="broken_plugin.*not_a_real_module_xyz"):
        load_plugins(["broken_plugin"])


def test_typo_in_hook_name_is_rejected():
    bad = _module("typo_plugin", model_provder=lambda config, runtime: None)
    with pytest.raises(PluginError, match=r"model_provder.*known hooks: .*model_provider"):
        load_plugins([toy, bad])


def test_missing_required_hook_is_rejected():
    partial = _module("partial", model_provider=lambda config, runtime: None)
    with pytest.raises(PluginError, match="do not implement required hook.*datasets_provider, loss_func"):
        load_plugins([partial])


def test_stacked_plugin_overrides_one_hook(mm_train):
    def loss_func(output, batch, runtime):
        return torch.nn.functional.l1_loss(output, batch["y"]), {"l1": 1.0}

    l1 = _module("l1_override", loss_func=loss_func)
    result = mm_train([toy, l1], "training.train_iters=2", "training.save_interval=0")
    base = mm_train([toy], "training.train_iters=2", "training.save_interval=0",
                    output_dir=result.output_dir.parent / "base")
    assert result.losses[1] != base.losses[1]
    lines = (result.output_dir / "metrics.jsonl").read_text().splitlines()
    assert '"l1": 1.0' in lines[0]


def test_empty_training_data_is_one_clear_error(mm_train):
    from mm_core.errors import DataError

    empty = _module("empty_data", datasets_provider=lambda config, runtime: ([], None, None))
    with pytest.raises(DataError, match="train dataset yields no batches"):
        mm_train([toy, empty])


def test_wrong_loss_func_return_is_named(mm_train):
    bad = _module("bad_loss", loss_func=lambda output, batch, runtime: output.mean())
    with pytest.raises(PluginError, match=r"loss_func must return \(loss, metrics dict\)"):
        mm_train([toy, bad])


def test_after_training_gets_the_last_checkpoint(mm_train):
    seen = []
    hook = _module("after", after_training=lambda config, runtime, checkpoint: seen.append(checkpoint))
    result = mm_train([toy, hook], "training.train_iters=3", "training.save_interval=2")
    assert seen == [result.checkpoint]
    assert result.checkpoint.name == "step_00000003"


def test_parallelize_model_result_is_what_trains(mm_train):
    def parallelize_model(model, plan, config, runtime):
        model.embed.requires_grad_(False)
        return model

    frozen = _module("freeze_embed", parallelize_model=parallelize_model)
    result = mm_train([toy, frozen], "training.train_iters=1", "training.save_interval=1")
    initial = toy.build(make_config(load_plugins([toy])).model)
    trained = toy.build(make_config(load_plugins([toy])).model)
    load_model_state(result.checkpoint, trained)
    assert torch.equal(trained.embed.weight, initial.embed.weight)
    assert not torch.equal(trained.cond.weight, initial.cond.weight)


def test_default_config_of_a_stacked_plugin_wins(mm_pm):
    later = _module("later", default_config=lambda task: {"model": {"depth": 7}})
    pm = load_plugins([toy, later], pm=mm_pm)
    config = make_config(pm, "run", plugin_name="later")
    assert config.model.depth == 7
    assert config.model.dim == 8
    assert config.training.output_dir == "runs/later"


def test_a_module_without_hook_implementations_is_one_error(mm_pm):
    plain = types.ModuleType("no_hooks")
    plain.model_provider = lambda config, runtime: None  # not marked with @hookimpl
    with pytest.raises(PluginError, match="plugin 'no_hooks' implements no mm hook: mark its hook functions"):
        load_plugins(["mm_core.testing.toy", plain], pm=mm_pm)
