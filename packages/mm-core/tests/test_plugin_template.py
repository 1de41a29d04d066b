"""examples/plugin-template is a working plugin: it trains, and a fresh venv can install it and `mm run` it."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = ROOT / "examples" / "plugin-template"
pytestmark = pytest.mark.skipif(not TEMPLATE.is_dir(), reason="examples/ is not beside this package")


def test_template_trains_by_module_path(mm_train, monkeypatch):
    pytest.importorskip("mm_data")
    assert 'plugin_template = "mm_plugin_template.plugin"' in (TEMPLATE / "pyproject.toml").read_text()
    monkeypatch.syspath_prepend(str(TEMPLATE / "src"))
    result = mm_train(["mm_plugin_template.plugin"], "training.train_iters=60", "training.save_interval=0",
                      "logging.progress_bar=false")
    losses = [result.losses[step] for step in sorted(result.losses)]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    for name in [n for n in sys.modules if n.startswith("mm_plugin_template")]:
        monkeypatch.delitem(sys.modules, name)


def _fresh_venv(path: Path) -> Path:
    """A new venv that also sees this interpreter's packages (torch, mm), like --system-site-packages would.

    ``--system-site-packages`` reaches the base interpreter, not the venv the tests run in, so the new
    venv adds this one's site directories (their .pth files included, for editable installs).
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in dict.fromkeys(dirs))
    Path(purelib, "parent_env.pth").write_text(lines)
    return python


def _run(*args: str, cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_template_installs_into_a_fresh_venv_and_runs(tmp_path):
    pytest.importorskip("mm_data")
    pytest.importorskip("setuptools")
    package = tmp_path / "my-plugin"  # a user's copy; building writes egg-info beside the sources
    shutil.copytree(TEMPLATE, package, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    python = _fresh_venv(tmp_path / "venv")
    _run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-build-isolation",
         "--no-index", str(package), cwd=tmp_path)

    listing = _run(str(python), "-m", "mm_core.cli", "plugins", cwd=tmp_path)
    assert any(line.split()[:3] == ["plugin_template", "mm-plugin-template", "0.1.0"] for line in listing.splitlines())

    out = tmp_path / "run"
    printed = _run(str(python), "-m", "mm_core.cli", "run", "--plugin", "plugin_template", "training.train_iters=20",
                   f"training.output_dir={out}", "logging.progress_bar=false", cwd=tmp_path)
    assert "step 20/20 | loss " in printed and "done: 20 steps, loss " in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 21)) and all(0 <= r["accuracy"] <= 1 for r in train)
    assert (out / "checkpoints" / "step_00000020").is_dir()

    tests = _run(str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=package)
    assert "5 passed" in tests
