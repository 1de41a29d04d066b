"""Pipeline parallelism: stage cuts, and training on 2 and 4 gloo ranks equal to one process (losses, grad norms,
validation losses, post-step weights), with FSDP2 or DDP across pipelines, and resume between PP and no PP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from mm_core.errors import ConfigError, PluginError
from mm_core.plan import PipelinePlan
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import run_training, spawn_training, toy
from mm_parallel.pipeline import (
    StagePlan,
    bubble_fraction,
    check_coverage,
    check_first_stage_stack,
    check_schedule,
    layer_ranges,
    local_stages,
    pipeline_num_layers,
    split_stages,
    stage_layer_counts,
)

PLUGIN = ["mm_core.testing.toy"]
# 8 blocks, 4 steps saving at 2 and 4, validation at 2 and 4, gradients clipped (the norm spans the stages).
RUN = ["model.depth=8", "training.train_iters=4", "training.save_interval=2", "training.keep_last=0",
       "training.eval_interval=2", "training.eval_iters=2", "training.clip_grad=0.5"]
PP2 = ["parallel.pp.size=2", "parallel.pp.pipeline_num_layers=[3,5]"]


def _metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """The train and validation lines of a run's metrics.jsonl."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "loss" in r], [r for r in lines if "valid_loss" in r]


def _later_losses(run_dir: Path) -> dict[int, float]:
    """The training losses of steps 3 and 4 of a finished run, from its metrics.jsonl."""
    return {r["step"]: r["loss"] for r in _metrics(run_dir)[0] if r["step"] > 2}


def _weights(checkpoint: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The full model weights of a DCP checkpoint, however many ranks wrote it."""
    out = tmp_path / f"{checkpoint.parent.parent.name}.pt"
    dcp_to_torch_save(checkpoint, out)
    return torch.load(out, weights_only=False)["model"]


def _assert_same_run(run_dir: Path, reference: Path, tmp_path: Path) -> None:
    train, valid = _metrics(run_dir)
    ref_train, ref_valid = _metrics(reference)
    assert [r["step"] for r in train] == [1, 2, 3, 4]  # logged once per step
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in train] == pytest.approx([r[key] for r in ref_train], rel=1e-5), key
    assert [r["valid_loss"] for r in valid] == pytest.approx([r["valid_loss"] for r in ref_valid], rel=1e-5)
    last = "checkpoints/step_00000004"
    weights, expected = _weights(run_dir / last, tmp_path), _weights(reference / last, tmp_path)
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("single")
    run_training(PLUGIN, run_dir, RUN)
    return run_dir


@pytest.fixture(scope="module")
def pp2(tmp_path_factory) -> Path:
    """Two ranks, 1F1B, an uneven cut of the 8 blocks."""
    run_dir = tmp_path_factory.mktemp("pp2")
    spawn_training(2, PLUGIN, run_dir, [*PP2, *RUN])
    return run_dir


def test_1f1b_on_two_ranks_equals_one_process(single, pp2, tmp_path):
    _assert_same_run(pp2, single, tmp_path)


@pytest.mark.parametrize(
    ("world", "overrides"),
    [
        pytest.param(
            2,
            ["parallel.pp.size=2", "parallel.pp.schedule=interleaved_1f1b", "parallel.pp.virtual_stages=2",
             "parallel.pp.pipeline_num_layers=[[1,3],[2,2]]"],
            id="interleaved-pp2-v2",
        ),
        pytest.param(4, ["parallel.pp.size=4", "model.meta=true", "model.pretrained=true"], id="1f1b-pp4-meta",
                     marks=pytest.mark.slow),
        pytest.param(
            4,
            ["parallel.pp.size=2", "parallel.fsdp2.enable=true", "parallel.fsdp2.recompute_modules=['blocks.{1,6}']"],
            id="pp2-fsdp2",
            marks=pytest.mark.slow,
        ),
        pytest.param(4, ["parallel.pp.size=2"], id="pp2-ddp", marks=pytest.mark.slow),
    ],
)
def test_pipeline_training_equals_one_process(single, tmp_path, world, overrides):
    spawn_training(world, PLUGIN, tmp_path / "run", [*overrides, *RUN])
    _assert_same_run(tmp_path / "run", single, tmp_path)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(PP2, id="1f1b-pp2"),
        pytest.param(["parallel.pp.size=2", "parallel.pp.schedule=interleaved_1f1b", "parallel.pp.virtual_stages=2",
                      "model.meta=true", "model.pretrained=true"], id="interleaved-pp2-v2-meta"),
        pytest.param(["parallel.pp.size=2", "parallel.fsdp2.enable=true"], id="pp2-fsdp2", marks=pytest.mark.slow),
    ],
)
def test_weights_tied_across_stages_train_as_one_process(tmp_path, overrides):
    """The last stage's copy of a tied weight starts, and stays, equal to the first stage's: losses and grad norms
    (the tied weight counted once) equal one process, and the checkpoint holds both names with one value."""
    tie = ["model.tie=true", *RUN]
    run_training(PLUGIN, tmp_path / "one", tie)
    world = 4 if "parallel.fsdp2.enable=true" in overrides else 2
    spawn_training(world, PLUGIN, tmp_path / "pp", [*overrides, *tie])
    _assert_same_run(tmp_path / "pp", tmp_path / "one", tmp_path)
    weights = _weights(tmp_path / "pp/checkpoints/step_00000004", tmp_path)
    torch.testing.assert_close(weights["skip.weight"], weights["cond.weight"], rtol=0, atol=0)


@pytest.mark.slow
def test_tied_checkpoint_without_pipeline_resumes_with_it(tmp_path):
    """The last stage names its copy as the first does: a checkpoint's optimizer state fits both ends."""
    tie = ["model.tie=true", *RUN]
    one = run_training(PLUGIN, tmp_path / "one", tie).losses
    _resume_from_step_2(tmp_path / "one", tmp_path / "run")
    losses = spawn_training(2, PLUGIN, tmp_path / "run", [*PP2, "training.resume=true", *tie])
    assert losses == pytest.approx({step: loss for step, loss in one.items() if step > 2}, rel=1e-5)


def test_weights_tied_between_layers_and_an_end_are_an_error():
    model = torch.nn.ModuleDict({"inp": torch.nn.Linear(2, 2), "blocks": torch.nn.ModuleList([torch.nn.Linear(2, 2)])})
    model.inp.weight = model.blocks[0].weight
    plan = StagePlan.from_plan(
        PipelinePlan(layers="blocks", pre=lambda m, b: b, post=lambda m, c, b: c, pre_modules=("inp",))
    )
    with pytest.raises(PluginError) as info:
        check_coverage(model, plan)
    assert str(info.value) == (
        "parameter 'blocks.0.weight' (PipelinePlan.layers) is tied to 'inp.weight' (PipelinePlan.pre_modules): only "
        "weights shared between PipelinePlan.pre_modules and PipelinePlan.post_modules can be tied across pipeline "
        "stages; untie them"
    )


def _resume_from_step_2(source: Path, run_dir: Path) -> None:
    shutil.copytree(source, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_00000004")


def test_pipeline_checkpoint_resumes_without_pipeline(single, pp2, tmp_path):
    _resume_from_step_2(pp2, tmp_path / "run")
    losses = run_training(PLUGIN, tmp_path / "run", ["training.resume=true", *RUN]).losses
    assert losses == pytest.approx(_later_losses(single), rel=1e-5)


def test_pipeline_checkpoint_resumes_with_pipeline(single, pp2, tmp_path):
    # Optimizer state is keyed by parameter name: each stage's param groups survive the other stage's.
    _resume_from_step_2(pp2, tmp_path / "run")
    losses = spawn_training(2, PLUGIN, tmp_path / "run", [*PP2, "training.resume=true", *RUN])
    assert losses == pytest.approx(_later_losses(single), rel=1e-5)


@pytest.mark.slow
def test_checkpoint_without_pipeline_resumes_with_it(single, tmp_path):
    _resume_from_step_2(single, tmp_path / "run")
    losses = spawn_training(2, PLUGIN, tmp_path / "run", [*PP2, "training.resume=true", *RUN])
    assert losses == pytest.approx(_later_losses(single), rel=1e-5)


def test_even_and_explicit_cuts():
    assert stage_layer_counts(10, 4, 1, None, "blocks") == [3, 3, 2, 2]
    assert stage_layer_counts(8, 2, 1, [3, 5], "blocks") == [3, 5]
    # MindSpeed-MM's VPP form: one row per virtual stage; stage v·pp + r is row v, column r.
    assert stage_layer_counts(8, 2, 2, [[1, 3], [2, 2]], "blocks") == [1, 3, 2, 2]
    assert stage_layer_counts(8, 2, 1, {"blocks": [4, 4], "vit": [2, 0]}, "blocks") == [4, 4]
    assert local_stages(1, 2, 2) == [1, 3]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([3, 4], "pipeline_num_layers [3, 4] sums to 7 layers, but the model's 'blocks' has 8"),
        ([8], "must be a list of 2 layer counts, one per stage"),
        ([[4, 4]], "needs 2 row(s) (virtual_stages) of 2 (pp.size) counts"),
        ([9, -1], "whole numbers of layers"),
        ({"llm": [4, 4]}, "names stacks llm but not 'blocks'"),
    ],
)
def test_bad_pipeline_num_layers_is_one_clear_error(value, message):
    virtual = 2 if value == [[4, 4]] else 1
    with pytest.raises(ConfigError) as info:
        stage_layer_counts(8, 2, virtual, value, "blocks")
    assert message in str(info.value)
    assert str(info.value).startswith("parallel.pp.pipeline_num_layers")


def test_two_stacks_vision_whole_on_the_first_stage():
    """The seeds' vit_pp_layers / llm_pp_layers: the vision stack runs whole on stage 0, the LLM is cut."""
    cuts = {"vit": [[32, 0, 0, 0]], "llm": [[1, 10, 10, 15]]}
    check_first_stage_stack(32, 4, 1, cuts, "vit", "llm")
    check_first_stage_stack(32, 4, 1, {"llm": [9, 9, 9, 9]}, "vit", "llm")  # no vit entry: all on stage 0
    assert stage_layer_counts(36, 4, 1, cuts, "llm") == [1, 10, 10, 15]
    with pytest.raises(ConfigError) as info:
        check_first_stage_stack(32, 2, 1, {"vit": [16, 16], "llm": [18, 18]}, "vit", "llm")
    assert str(info.value) == (
        "parallel.pp.pipeline_num_layers.vit [16, 16] puts vit layers on stage(s) [1]: the 'vit' stack runs whole "
        "on the first stage, before 'llm'; write [32, 0] (only 'llm' is cut across stages)"
    )
    with pytest.raises(ConfigError, match="sums to 30 layers, but the model's 'vit' has 32"):
        check_first_stage_stack(32, 2, 1, {"vit": [30, 0]}, "vit", "llm")


def _toy_stages(stages: list[int], tie: bool = True) -> tuple[list[torch.nn.Module], dict[str, torch.Tensor]]:
    """The toy's 8 blocks cut into 2 × 2 virtual stages; the stage modules of ``stages``, and the weights before."""
    overrides = ["model.dim=4", "model.depth=8", f"model.tie={str(tie).lower()}"]
    config = make_config(load_plugins([toy]), overrides=overrides)
    model = toy.build(config.model)
    weights = dict(model.named_parameters(remove_duplicate=False))
    plan = StagePlan.from_plan(toy.parallel_plan(model=model, config=config).pipeline)
    modules = split_stages(model, plan, layer_ranges(model, plan, 2, 2, None), stages)
    assert modules[-1] is model  # the model itself, pruned, is the last stage module
    return modules, weights


def _blocks(*indices: int) -> set[str]:
    return {f"blocks.{i}.{name}" for i in indices for name in ("norm.weight", "norm.bias", "fc1.weight", "fc1.bias",
                                                                  "fc2.weight", "fc2.bias")}


def test_stage_modules_hold_their_parts_under_their_names_and_copy_no_weight():
    first, third = _toy_stages([0, 2])[0]
    assert {n for n, _ in first.named_parameters()} == {"encoder.weight", "encoder.bias", "embed.weight", "embed.bias",
                                                         "cond.weight", "cond.bias", *_blocks(0, 1)}
    assert [n for n, _ in first.named_buffers()] == ["shift"]
    assert {n for n, _ in third.named_parameters()} == _blocks(4, 5)
    assert (third.encoder, third.embed, third.shift, third.head, third.scale) == (None, None, None, None, None)
    assert [i for i, _ in enumerate(first.blocks)] == [0, 1] and first.blocks[1] is not third.blocks[4]
    (second, last), weights = _toy_stages([1, 3])
    assert {n for n, _ in second.named_parameters()} == _blocks(2, 3)
    assert {n for n, _ in last.named_parameters()} == {"norm_out.weight", "norm_out.bias", "head.weight",
                                                        "head.bias", "scale", "skip.weight", *_blocks(6, 7)}
    # The last stage keeps the tied weight under its own name; every weight is the model's own tensor, not a copy.
    assert last.cond is None and last.skip.weight is weights["cond.weight"]
    for module in (second, last):
        for name, param in module.named_parameters():
            assert param is weights[name], name


def test_two_stack_plan():
    plan = StagePlan.from_plan(PipelinePlan(
        layers={"vit": "visual.blocks", "llm": "layers"}, pre=lambda m, b: b, post=lambda m, c, b: c,
        pre_modules=["embed"],
    ))
    assert (plan.layers, plan.name, plan.pre_stacks) == ("layers", "llm", (("vit", "visual.blocks"),))
    assert plan.pre_modules == ("embed", "visual.blocks")
    inside = StagePlan.from_plan(PipelinePlan(
        layers={"vit": "visual.blocks", "llm": "layers"}, pre=lambda m, b: b, post=lambda m, c, b: c,
        pre_modules=["visual", "embed"],
    ))
    assert inside.pre_modules == ("visual", "embed")


def test_plugin_pipeline_num_layers_fill_in_and_must_agree():
    assert pipeline_num_layers(None, {"llm": [1, 3]}) == {"llm": [1, 3]}
    assert pipeline_num_layers({"llm": [1, 3]}, {"llm": [1, 3]}) == {"llm": [1, 3]}
    with pytest.raises(ConfigError, match=r"\[2, 2\] differs from the model section's \{'llm': \[1, 3\]\}"):
        pipeline_num_layers([2, 2], {"llm": [1, 3]})


def test_too_few_layers_for_an_even_cut():
    with pytest.raises(ConfigError, match="has 3 layers, fewer than the 4 pipeline stages"):
        stage_layer_counts(3, 2, 2, None, "blocks")


def test_plan_and_schedule_errors():
    with pytest.raises(PluginError, match="needs the plugin's parallel_plan to give a pipeline"):
        StagePlan.from_plan(None)
    with pytest.raises(TypeError, match="missing 2 required keyword-only arguments: 'pre' and 'post'"):
        PipelinePlan(layers="blocks")
    with pytest.raises(PluginError, match="PipelinePlan.post must be a function, got str"):
        PipelinePlan(layers="blocks", pre=lambda m, b: b, post="head")
    with pytest.raises(ConfigError, match="virtual_stages 2 needs parallel.pp.schedule interleaved_1f1b"):
        check_schedule("1f1b", 2)
    model = torch.nn.ModuleDict({"inp": torch.nn.Linear(2, 2), "blocks": torch.nn.ModuleList([torch.nn.Linear(2, 2)])})
    plan = StagePlan(layers="blocks", pre=lambda m, b: b, post=lambda m, c, b: c)
    with pytest.raises(PluginError) as info:
        check_coverage(model, plan)
    assert str(info.value) == (
        "parameter 'inp.weight' is in none of PipelinePlan.layers ('blocks'), PipelinePlan.pre_modules [] or "
        "PipelinePlan.post_modules []; name its module in one"
    )


def test_bubble_fraction():
    assert bubble_fraction(4, 8) == pytest.approx(3 / 11)
    assert bubble_fraction(4, 8, virtual=2) == pytest.approx(1.5 / 9.5)
