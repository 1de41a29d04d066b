"""``parallel.compile``: compiled blocks keep their paths, train like eager, and bad options are one clear error.

The fast cases use the ``aot_eager`` backend (Dynamo and AOT autograd, which trace the checkpoint and the
selective policy, without inductor's code generation); the slow ones compile with inductor.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import workers
from distributed import launch

from mm_core.errors import ConfigError
from mm_core.testing import needs_cuda, run_training, toy
from mm_parallel.compile import COMPILE_DEFAULTS, apply_compile
from mm_parallel.patterns import clean_name, named_modules
from mm_parallel.recompute import apply_recompute

AOT_EAGER = ["parallel.compile.enable=true", "parallel.compile.backend=aot_eager"]
RECOMPUTE = ["parallel.fsdp2.recompute_modules=['blocks.{1,3}']"]


def _step(compiled: bool) -> tuple[torch.nn.Module, torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = toy.ToyModel(dim=16, depth=4)
    apply_recompute(model, ["blocks.{0,2}"], mode="selective")
    if compiled:
        apply_compile(model, ["blocks.{*}"], backend="aot_eager")
    x = torch.randn(8, 1, toy.IN)
    loss = model(x).square().mean()
    loss.backward()
    return model, loss.detach(), {clean_name(n): p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_compiled_blocks_keep_their_paths_and_gradients():
    eager, eager_loss, eager_grads = _step(compiled=False)
    compiled, loss, grads = _step(compiled=True)
    assert all(type(compiled.blocks[i]).__name__ == "OptimizedModule" for i in range(4))
    assert named_modules(compiled).keys() == named_modules(eager).keys()
    torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=0)
    assert grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_the_section_is_off_by_default_and_defaults_to_the_plans_blocks(tmp_path):
    assert COMPILE_DEFAULTS["enable"] is False and COMPILE_DEFAULTS["modules"] == []
    eager = run_training([toy], tmp_path / "eager", RECOMPUTE)
    compiled = run_training([toy], tmp_path / "compiled", [*RECOMPUTE, *AOT_EAGER])
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-5)


def test_a_compiled_runs_checkpoint_resumes_without_compile(tmp_path):
    full = run_training([toy], tmp_path / "full", AOT_EAGER).losses
    run_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full", run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_00000006")
    resumed = run_training([toy], run_dir, ["training.resume=true"]).losses
    assert resumed == pytest.approx({step: full[step] for step in (4, 5, 6)}, rel=1e-5)


@pytest.mark.parametrize(
    "override, message",
    [
        ("parallel.compile.mode=fastest", "parallel.compile.mode must be one of default, reduce-overhead"),
        ("parallel.compile.backend=turbo", "parallel.compile.backend must be one of .*inductor.*, got 'turbo'"),
        ("parallel.compile.modules=['block.{*}']", "parallel.compile.modules: pattern 'block.{\\*}' matches no"),
    ],
)
def test_a_wrong_option_is_one_config_error(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_training([toy], tmp_path, [*AOT_EAGER, override])


def test_no_module_to_compile_is_one_config_error():
    with pytest.raises(ConfigError, match="parallel.compile is on but no module is named"):
        apply_compile(toy.ToyModel(dim=4, depth=1), [])


@pytest.mark.slow
def test_inductor_trains_like_eager(tmp_path):
    eager = run_training([toy], tmp_path / "eager", RECOMPUTE)
    compiled = run_training([toy], tmp_path / "inductor", [*RECOMPUTE, "parallel.compile.enable=true"])
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-5)


@pytest.mark.slow
def test_compile_under_fsdp2_on_two_ranks_equals_one_process(tmp_path):
    options = [*RECOMPUTE, *AOT_EAGER, "parallel.fsdp2.enable=true"]
    single = run_training([toy], tmp_path / "one", options).losses
    launch(2, workers.train, str(tmp_path / "two.json"), str(tmp_path / "two"), options)
    two = {int(k): v for k, v in json.loads((tmp_path / "two.json").read_text()).items()}
    assert two == pytest.approx(single, rel=1e-5)


@needs_cuda
def test_inductor_on_cuda_trains_like_eager(tmp_path):
    cuda = [*RECOMPUTE, "training.device=cuda"]
    eager = run_training([toy], tmp_path / "eager", cuda)
    compiled = run_training([toy], tmp_path / "inductor", [*cuda, "parallel.compile.enable=true"])
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)
