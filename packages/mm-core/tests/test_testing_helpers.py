"""mm_core.testing is for bench scripts too: it imports where pytest is not installed."""

from __future__ import annotations

import subprocess
import sys

BLOCK_PYTEST = """
import importlib.abc, sys
class NoPytest(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("pytest", "_pytest"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoPytest())
import mm_core.testing
print(sorted(n for n in ("run_training", "spawn_training") if hasattr(mm_core.testing, n)))
"""


def test_mm_core_testing_imports_without_pytest():
    out = subprocess.run([sys.executable, "-c", BLOCK_PYTEST], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['run_training', 'spawn_training']"
