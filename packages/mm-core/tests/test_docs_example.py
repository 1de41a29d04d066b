"""docs/plugins.md must say what the code does: its hook table matches hookspecs.py, its code trains as shown."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest
import torch

from mm_core import hookspecs
from mm_core.plugins import load_plugins

TUTORIAL = "Tutorial: a plugin in five minutes"
SPECS = {n: getattr(hookspecs, n) for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "mm_spec")}


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


def _hook_table() -> dict[str, tuple[list[str], bool]]:
    """hook name -> (argument names, firstresult) from the table rows of "The hook contract"."""
    rows = re.findall(r"^\| `(\w+)\(([^)]*)\)` \| (first|all) \|", _section("The hook contract"), re.M)
    return {name: ([a.strip() for a in args.split(",") if a.strip()], kind == "first") for name, args, kind in rows}


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


@pytest.fixture
def documented_plugins(tmp_path, monkeypatch) -> Path:
    """The tutorial's my_plugin.py and the stacking section's my_loss.py, importable."""
    (tmp_path / "my_plugin.py").write_text(_code(TUTORIAL))
    (tmp_path / "my_loss.py").write_text(_code("Stacking: override one hook of another plugin"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("my_plugin", "my_loss", "documented_tests"):
        sys.modules.pop(name, None)


def _exec(source: str):
    module = type(sys)("documented_tests")
    exec(compile(source, "docs/plugins.md", "exec"), module.__dict__)
    return module


def test_documented_plugin_trains_as_shown(documented_plugins, mm_train) -> None:
    result = mm_train(["my_plugin"], "training.save_interval=0")
    assert sorted(result.losses) == list(range(1, 51))
    assert result.losses[50] < result.losses[1] / 10
    _exec(_code(TUTORIAL, index=1)).test_loss_goes_down(mm_train)  # the tutorial's step 3


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
@pytest.mark.parametrize("engine", [[], ["parallel.fsdp2.enable=true"]], ids=["ddp", "fsdp2"])
def test_documented_distributed_test_passes(documented_plugins, mm_train, tmp_path, engine) -> None:
    pytest.importorskip("mm_parallel")
    _documented_tests().test_two_processes_match_one(mm_train, tmp_path, engine)  # children inherit sys.path
