"""LoRA on the toy plugin: the base model's first loss, adapters alone train and are saved, exact resume, meta init."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml

from mm_core import lora
from mm_core.cli import main
from mm_core.config import build_config, wrap
from mm_core.errors import CheckpointError, ConfigError
from mm_core.optim import build_optimizer
from mm_core.plan import ParallelPlan
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import run_training, spawn_training, toy

PLUGIN = ["mm_core.testing.toy"]
LORA = ["model.lora.rank=4", "model.lora.alpha=8", "model.lora.target_modules=[fc1,fc2]"]
STEPS = ["training.train_iters=4", "training.save_interval=2"]
FAST = ["training.device=cpu", "training.micro_batch_size=8"]  # one micro-batch a step


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The toy's 4 steps without and with LoRA, and with LoRA 2 steps then resumed for 2."""
    root = tmp_path_factory.mktemp("lora")
    base = run_training(PLUGIN, root / "base", ["training.train_iters=1", *FAST])
    straight = run_training(PLUGIN, root / "straight", [*STEPS, *LORA, *FAST])
    split = [*LORA, *FAST, "training.save_interval=2", "training.lr_decay_iters=4"]
    first = run_training(PLUGIN, root / "split", [*split, "training.train_iters=2"])
    second = run_training(PLUGIN, root / "split", [*split, "training.train_iters=4", "training.resume=true"])
    return base, straight, {**first.losses, **second.losses}


def test_first_loss_is_the_base_models(runs):
    base, straight, _ = runs
    assert straight.losses[1] == base.losses[1]
    assert straight.losses[4] != pytest.approx(straight.losses[1], rel=1e-3)


def test_resume_of_a_lora_run_is_exact(runs):
    _, straight, resumed = runs
    assert resumed == straight.losses


def test_checkpoint_holds_the_adapters_and_their_optimizer_state_only(runs):
    _, straight, _ = runs
    keys = dcp.FileSystemReader(str(straight.checkpoint)).read_metadata().state_dict_metadata
    weights = [k for k in keys if k.startswith("model.")]
    moments = [k for k in keys if k.startswith("optim.state.")]
    assert [k for k in weights if not lora.is_adapter(k)] == ["model.shift"]  # a buffer, not a weight
    assert moments and all(lora.is_adapter(k) for k in moments)
    assert len(weights) == 1 + 4 * 2 * 2  # 4 blocks, fc1 and fc2, A and B


def test_only_the_adapters_change_in_a_step():
    config = wrap({"model": {"lora": {"rank": 2, "target_modules": ["blocks.*.fc1"]}},
                   "parallel": {"tp": {"size": 1}}, "training": {"seed": 0}})
    model = toy.build(wrap(toy.default_config("run")["model"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora.apply(model, ParallelPlan(), config)
    training = wrap({"lr": 0.1, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_eps": 1e-8})
    optimizer = build_optimizer(model, training, torch.device("cpu"))
    batch = toy.Samples(8, 1, seed=0)[0]
    loss, _ = toy.loss_func(model(batch["x"][None]), {k: v[None] for k, v in batch.items()}, None)
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        adapted = key.replace(".fc1.", ".fc1.base_layer.")
        assert torch.equal(after[adapted], value), key
    changed = [k for k in after if lora.is_adapter(k) and not torch.equal(after[k], torch.zeros_like(after[k]))]
    assert any(".lora_B." in k for k in changed)
    assert config.model.lora.target_modules == ["blocks.*.fc1"]


def test_meta_init_with_pretrained_weights_starts_from_them_and_the_header_counts(runs, tmp_path, capsys):
    base, _, _ = runs
    meta = run_training(PLUGIN, tmp_path, ["training.train_iters=1", *FAST, "model.meta=true",
                                           "model.pretrained=true", *LORA])
    assert meta.losses[1] == pytest.approx(base.losses[1], rel=1e-6)
    out = capsys.readouterr().out
    assert "LoRA: 768 trainable of 2,088 parameters (36.78%)" in out  # 4 blocks × (4·8 + 16·4 + 4·16 + 8·4)


def test_a_dcp_directory_as_pretrained_weights_loads_under_the_adapted_names(runs):
    base, _, _ = runs
    model = toy.build(wrap(toy.default_config("run")["model"]))
    names = lora.inject(model, lora.settings({"lora": {"rank": 2}}), ["fc1"])
    state = lora.adapted_pretrained(str(base.checkpoint), names, model, seed=0)()
    assert state.keys() == model.state_dict().keys()
    assert not state["blocks.0.fc1.lora_B.default.weight"].any()
    saved = lora.read_dcp_model(base.checkpoint)
    assert torch.equal(state["blocks.0.fc1.base_layer.weight"], saved["blocks.0.fc1.weight"])


def test_resuming_a_lora_checkpoint_without_lora_is_one_error(runs, tmp_path):
    _, straight, _ = runs
    shutil.copytree(straight.output_dir / "checkpoints", tmp_path / "checkpoints")
    with pytest.raises(CheckpointError, match="is a LoRA run's checkpoint .*resume it with its model.lora"):
        run_training(PLUGIN, tmp_path, [*STEPS, *FAST, "training.train_iters=6", "training.resume=true"])


def test_megatron_flag_names_and_defaults(capsys):
    pm = load_plugins(PLUGIN)
    config = make_config(pm, "run", overrides=["model.lora-r=16", "model.lora-alpha=32",
                                               "model.lora-target-modules=[fc1]"])
    assert config.model.lora == {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["fc1"]}
    assert make_config(pm, "run").model.lora.rank == 0
    assert main(["config", "--plugin", "mm_core.testing.toy", "--lora-r", "8", "--lora-target-modules", "fc1",
                 "fc2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["lora"]
    assert (printed["rank"], printed["target_modules"]) == (8, ["fc1", "fc2"])
    with pytest.raises(ConfigError, match="model.lora.rank"):
        build_config({"model": {"lora": lora.DEFAULTS}}, overrides=["model.lora.rank=[1]"])


@pytest.mark.parametrize("section, message", [
    ({"rank": -1}, "model.lora.rank must be a whole number"),
    ({"rank": 4, "dropout": 1.5}, r"model.lora.dropout must be a number in \[0, 1\)"),
    ({"rank": 4, "targets": ["fc1"]}, "unknown key model.lora.targets"),
])
def test_bad_settings_are_one_clear_error(section, message):
    with pytest.raises(ConfigError, match=message):
        lora.settings({"lora": section})


def test_a_target_matching_nothing_and_tensor_parallelism_are_clear_errors():
    model = toy.build(wrap(toy.default_config("run")["model"]))
    config = wrap({"model": {"lora": {"rank": 2, "target_modules": ["to_q"]}}, "parallel": {"tp": {"size": 1}},
                   "training": {"seed": 0}})
    with pytest.raises(ConfigError, match="entry 'to_q' matches no module.*blocks.0.fc1"):
        lora.apply(model, ParallelPlan(), config)
    config.parallel.tp["size"] = 2
    with pytest.raises(ConfigError, match=r"model.lora \(LoRA\) and parallel.tp.size > 1"):
        lora.apply(model, ParallelPlan(), config)
    config.parallel.tp["size"] = 1
    config.model.lora["target_modules"] = None
    with pytest.raises(ConfigError, match="ParallelPlan.lora_targets"):
        lora.apply(model, ParallelPlan(), config)


@pytest.mark.slow
@pytest.mark.parametrize("options", [["parallel.fsdp2.enable=true"], ["parallel.pp.size=2"],
                                     ["parallel.fsdp2.enable=true", "model.meta=true", "model.pretrained=true"]],
                         ids=["fsdp2", "pp", "fsdp2-meta"])
def test_two_ranks_train_lora_like_one_process(runs, tmp_path, options):
    _, straight, _ = runs
    one = straight.losses
    if "model.meta=true" in options:  # fresh adapters of a meta model come from the seed, not the global RNG
        one = run_training(PLUGIN, tmp_path / "one", [*STEPS, *LORA, *FAST, *options[1:]]).losses
    two = spawn_training(2, PLUGIN, tmp_path / "two", [*STEPS, *LORA, *options, "training.micro_batch_size=4"])
    assert two == pytest.approx(one, rel=1e-5)
