"""docs/plugins.md must say what the code does: its hook table matches hookspecs.py, its code runs as shown,
and the errors of "What to do if it breaks" are the ones mm prints."""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mm_core import ConfigError, ParallelPlan, PluginError, hookspecs
from mm_core.cli import main
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import spawn_training

TUTORIAL = "Tutorial: a plugin in five minutes"
EXAMPLES = "One example per hook"
BREAKS = "What to do if it breaks"
SPECS = {n: getattr(hookspecs, n) for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "mm_spec")}
NEEDS = {"datasets_provider": "mm_data", "register_converters": "mm_convert"}  # packages the examples import
USER_FOLDER = "/home/you/my-plugin"  # where the page's tracebacks and messages say the tutorial lives


def _page() -> str:
    for parent in Path(__file__).resolve().parents:
        page = parent / "docs" / "plugins.md"
        if page.is_file():
            return page.read_text()
    pytest.skip("docs/plugins.md is not beside this package")


def _section(title: str) -> str:
    return _page().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _code(title: str, language: str = "python", index: int = 0) -> str:
    return re.findall(rf"```{language}\n(.*?)```", _section(title), re.S)[index]


def _tutorial_plugin() -> str:
    """my_plugin.py as the tutorial leaves it: step 1's module with step 5's parallel_plan added."""
    return _code(TUTORIAL) + "\n\n" + _code(TUTORIAL, index=1)


def _hook_examples() -> dict[str, str]:
    """hook name -> the code of its "### `name`" subsection in "One example per hook"."""
    return dict(re.findall(r"^### `(\w+)`\n.*?```python\n(.*?)```", _section(EXAMPLES), re.S | re.M))


def _with_examples(*hooks: str) -> str:
    """The tutorial's my_plugin.py with the examples of ``hooks`` pasted below it."""
    examples = _hook_examples()
    return "\n\n".join([_tutorial_plugin(), *(examples[h] for h in hooks)])


def _hook_table() -> dict[str, tuple[list[str], bool]]:
    """hook name -> (argument names, firstresult) from the table rows of "The hook contract"."""
    rows = re.findall(r"^\| `(\w+)\(([^)]*)\)` \| (first|all) \|", _section("The hook contract"), re.M)
    return {name: ([a.strip() for a in args.split(",") if a.strip()], kind == "first") for name, args, kind in rows}


def _exec(source: str, name: str = "documented_tests", namespace: dict | None = None):
    module = type(sys)(name)
    module.__dict__.update(namespace or {})
    exec(compile(source, "docs/plugins.md", "exec", dont_inherit=True), module.__dict__)  # no __future__ of ours
    return module


def test_every_hookspec_is_documented() -> None:
    page = _page()
    missing = [name for name in SPECS if f"`{name}(" not in page]
    assert not missing, f"docs/plugins.md does not document hook(s) {missing}"


def test_hook_table_matches_hookspecs() -> None:
    table = _hook_table()
    assert sorted(table) == sorted(SPECS), "the hook table must list exactly the hookspecs"
    for name, spec in SPECS.items():
        args, first = table[name]
        assert args == list(inspect.signature(spec).parameters), f"{name}: documented arguments differ"
        assert first == bool(spec.mm_spec["firstresult"]), f"{name}: documented first/all differs"


def test_each_hook_has_one_example_implementing_it() -> None:
    examples = _hook_examples()
    assert sorted(examples) == sorted(SPECS), "One example per hook must have a subsection per hookspec"
    base = vars(_exec(_code(TUTORIAL), "tutorial"))
    for hook, source in examples.items():
        if hook in NEEDS:
            pytest.importorskip(NEEDS[hook])
        defined = vars(_exec(source, hook, dict(base)))
        impls = [n for n, v in defined.items() if hasattr(v, "mm_impl") and base.get(n) is not v]
        assert impls == [hook], f"the example of {hook} implements {impls}"


@pytest.fixture
def plugin_folder(tmp_path, monkeypatch):
    """Call it with a module's source: it becomes my_plugin.py in a fresh importable folder, which it returns."""
    folder = tmp_path / "my-plugin"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))

    def write(source: str) -> Path:
        sys.modules.pop("my_plugin", None)
        (folder / "my_plugin.py").write_text(source)
        return folder

    yield write
    for name in ("my_plugin", "my_loss", "documented_tests"):
        sys.modules.pop(name, None)


@pytest.fixture
def documented_plugins(plugin_folder) -> Path:
    """The tutorial's my_plugin.py and the stacking section's my_loss.py, importable."""
    folder = plugin_folder(_tutorial_plugin())
    (folder / "my_loss.py").write_text(_code("Stacking: override one hook of another plugin"))
    return folder


def test_documented_plugin_trains_as_shown(documented_plugins, mm_train) -> None:
    results = []

    def recorded_train(*args, **kwargs):
        results.append(mm_train(*args, **kwargs))
        return results[-1]

    _exec(_code(TUTORIAL, index=2)).test_loss_goes_down(recorded_train)  # the tutorial's step 6
    first, last = re.search(r"done: 50 steps, loss ([\d.]+) → ([\d.]+)", _section(TUTORIAL)).groups()
    (result,) = results
    assert sorted(result.losses) == list(range(1, 51))
    assert result.losses[1] == pytest.approx(float(first), abs=1e-4)  # step 4's output
    assert result.losses[50] == pytest.approx(float(last), abs=1e-3)


def test_tutorial_plan_cuts_the_model_for_the_engines(documented_plugins, mm_pm) -> None:
    pipeline = pytest.importorskip("mm_parallel.pipeline")
    pm = load_plugins(["my_plugin"], pm=mm_pm)
    config = make_config(pm)
    model = pm.hook.model_provider(config=config, runtime=None)
    plan = pm.hook.parallel_plan(model=model, config=config)
    assert isinstance(plan, ParallelPlan) and plan.fsdp_modules == ("blocks.{*}",)
    assert pipeline.check_coverage(model, pipeline.StagePlan.from_plan(plan.pipeline)) == []  # nothing tied


def test_stacked_loss_replaces_only_loss_func(documented_plugins, mm_pm) -> None:
    pm = load_plugins(["my_plugin", "my_loss"], pm=mm_pm)
    output, batch = torch.zeros(4, 1), {"y": torch.tensor([[1.0], [-2.0], [3.0], [0.0]])}
    loss, _ = pm.hook.loss_func(output=output, batch=batch, runtime=None)
    assert float(loss) == pytest.approx(1.5)  # L1, not the plugin's MSE (3.5)
    assert pm.hook.forward_step.get_hookimpls()[-1].plugin_name == "my_plugin"


def _documented_tests():
    return _exec(_code("Testing a plugin"))


def test_documented_tests_pass(documented_plugins, mm_train, mm_pm) -> None:
    tests = _documented_tests()
    tests.test_loss_goes_down(mm_train)
    tests.test_hooks_register(mm_pm)


@pytest.mark.slow
@pytest.mark.parametrize("engine", [[], ["parallel.fsdp2.enable=true"], ["parallel.pp.size=2"]],
                         ids=["ddp", "fsdp2", "pp"])
def test_documented_distributed_test_passes(documented_plugins, mm_train, tmp_path, engine) -> None:
    pytest.importorskip("mm_parallel")
    _documented_tests().test_two_processes_match_one(mm_train, tmp_path, engine)  # children inherit sys.path


def _shown_after(command: str) -> str:
    """The output block the page shows right after the bash block running ``command``."""
    found = re.search(rf"```bash\n{re.escape(command)}\n```\n\n```\n(.*?)\n```", _section(EXAMPLES), re.S)
    return found.group(1)


def test_hook_examples_train_infer_extract_and_finetune_as_shown(plugin_folder, mm_train, tmp_path, capsys) -> None:
    pytest.importorskip("mm_parallel")  # allocates the meta model of the model_provider example
    plugin_folder(_with_examples("default_config", "model_provider", "parallel_plan", "inference",
                                 "extract_features", "after_training", "loss_func", "forward_step"))
    result = mm_train(["my_plugin"])
    assert f"try it: mm infer --plugin my_plugin --checkpoint {result.checkpoint}" in capsys.readouterr().out
    assert "mae" in json.loads((result.output_dir / "metrics.jsonl").read_text().splitlines()[-1])

    assert main(["infer", "--plugin", "my_plugin", "--checkpoint", str(result.checkpoint), "training.device=cpu"]) == 0
    infer = "PYTHONPATH=. mm infer --plugin my_plugin --checkpoint runs/my_plugin/checkpoints/step_00000050"
    assert capsys.readouterr().out.strip() == _shown_after(infer)
    features = tmp_path / "features.pt"
    assert main(["extract", "--plugin", "my_plugin", "--output", str(features), "training.device=cpu"]) == 0
    assert capsys.readouterr().out.strip() == _shown_after("PYTHONPATH=. mm extract --plugin my_plugin").replace(
        "features.pt", str(features))
    assert torch.load(features)["x"].shape == (256, 8)

    resumed, fresh = re.search(r"starts at loss ([\d.]+) instead of ([\d.]+)", _section(EXAMPLES)).groups()
    assert result.losses[1] == pytest.approx(float(fresh), abs=1e-4)
    finetune = mm_train(["my_plugin"], f"model.pretrained={result.checkpoint}", "training.train_iters=1",
                        output_dir=tmp_path / "finetune")
    assert finetune.losses[1] == pytest.approx(float(resumed), abs=1e-4)


def test_datasets_provider_example_logs_a_validation_loss(plugin_folder, mm_train) -> None:
    pytest.importorskip("mm_data")
    plugin_folder(_with_examples("datasets_provider"))
    result = mm_train(["my_plugin"], "training.train_iters=2", "training.eval_interval=1", "training.eval_iters=2")
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "valid_loss" in r] == [1, 2]


def test_get_batch_example_noises_input_and_target_alike() -> None:
    example = _exec(_hook_examples()["get_batch"], namespace=vars(_exec(_code(TUTORIAL), "tutorial")))
    x, y = torch.randn(4, 8), torch.zeros(4, 1)
    batch = example.get_batch(iter([(x, y)]), SimpleNamespace(device=torch.device("cpu")))
    noise = batch["x"] - x
    assert noise.abs().max() > 0
    assert torch.allclose(batch["y"] - y, noise.sum(dim=1, keepdim=True), atol=1e-6)


def test_forward_step_example_gives_the_loss_fp32_under_autocast() -> None:
    example = _exec(_hook_examples()["forward_step"], namespace=vars(_exec(_code(TUTORIAL), "tutorial")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = example.forward_step({"x": torch.randn(4, 8)}, example.Net(16, 1), None)
    assert output.dtype == torch.float32


def test_register_converters_example_converts_a_checkpoint(documented_plugins, mm_train, tmp_path) -> None:
    convert = pytest.importorskip("mm_convert")
    example = _exec(_hook_examples()["register_converters"], namespace=vars(_exec(_code(TUTORIAL), "tutorial")))
    registry = convert.Registry()
    example.register_converters(registry)
    converter = registry["MyPluginConverter"]
    assert list(converter.subcommands()) == ["to_torch"]
    checkpoint = mm_train(["my_plugin"], "training.train_iters=1").checkpoint
    target = tmp_path / "my_plugin.pt"
    options = example.ToTorchOptions(source_path=checkpoint, target_path=target)
    assert converter().run("to_torch", options) == f"wrote {target}"
    assert "embed.weight" in torch.load(target, weights_only=False)["model"]


@pytest.mark.slow
def test_parallelize_model_example_shards_as_the_engines_would(plugin_folder, mm_train, tmp_path) -> None:
    pytest.importorskip("mm_parallel")
    folder = plugin_folder(_with_examples("parallelize_model"))
    single = mm_train(["my_plugin"], "training.train_iters=4", output_dir=tmp_path / "one").losses
    double = spawn_training(2, ["my_plugin"], tmp_path / "two", ["training.train_iters=4"], sys_path=[folder])
    assert double == pytest.approx(single, rel=1e-5)


def _replaced(source: str, old: str, new: str) -> str:
    assert old in source, f"the tutorial no longer holds {old!r}"
    return source.replace(old, new)


@pytest.mark.parametrize(("old", "new", "error"), [
    ("def model_provider", "def model_provder", PluginError),
    ("def loss_func(output, batch, runtime)", "def loss_func(out, batch, runtime)", PluginError),
    ('pre_modules=["embed"]', 'pre_modules="embed"', PluginError),
    ('batch["y"])\n    return loss', 'batch["y"], reduction="none")\n    return loss', PluginError),
], ids=["misspelt-hook", "misspelt-argument", "plan-field-type", "loss-not-scalar"])
def test_what_breaks_shows_the_message_mm_prints(plugin_folder, mm_train, old, new, error) -> None:
    folder = plugin_folder(_replaced(_tutorial_plugin(), old, new))
    with pytest.raises(error) as raised:
        mm_train(["my_plugin"])
    assert f"error: {raised.value}".replace(str(folder), USER_FOLDER) in _section(BREAKS)


def test_what_breaks_shows_the_config_key_message(documented_plugins, mm_pm) -> None:
    with pytest.raises(ConfigError) as raised:
        make_config(load_plugins(["my_plugin"], pm=mm_pm), overrides=["model.hiden=128"])
    assert f"error: {raised.value}\n" in _section(BREAKS)


def test_a_misspelt_plan_field_stops_at_the_plugins_line(plugin_folder, mm_train) -> None:
    folder = plugin_folder(_replaced(_tutorial_plugin(), "fsdp_modules=", "fsdp_module="))
    with pytest.raises(TypeError) as raised:
        mm_train(["my_plugin"])
    where = raised.traceback[-1]
    assert (Path(where.path), where.name) == (folder / "my_plugin.py", "parallel_plan")
    shown = f'File "{USER_FOLDER}/my_plugin.py", line {where.lineno + 1}, in parallel_plan'
    assert shown in _section(BREAKS) and f"TypeError: {raised.value}" in _section(BREAKS)
