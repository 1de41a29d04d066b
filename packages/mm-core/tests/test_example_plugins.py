"""The example plugin packages' own tests (examples/*/tests are outside testpaths): run here, in a subprocess."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
HF_INTERNVL = EXAMPLES / "hf_internvl"


def _run_example_tests(example: Path, marker: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(example / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, "tests"],
        cwd=example, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"{example.name} tests failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def _needs(example: Path, *modules: str) -> None:
    if not example.is_dir():
        pytest.skip(f"{example} is not beside this package")
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{example.name} needs {module}")


def test_hf_internvl_example():
    _needs(HF_INTERNVL, "transformers", "mm_data", "mm_parallel")
    assert "4 passed" in _run_example_tests(HF_INTERNVL, "not slow")


@pytest.mark.slow
def test_hf_internvl_example_distributed():
    _needs(HF_INTERNVL, "transformers", "mm_data", "mm_parallel")
    assert "1 passed" in _run_example_tests(HF_INTERNVL, "slow")
