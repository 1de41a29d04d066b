"""Every hookspec must be exercised by a test somewhere in the monorepo (as datasette does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mm_core import hookspecs

SPECS = sorted(n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "mm_spec"))


def _test_sources() -> str:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "packages").is_dir() and (parent / "noxfile.py").is_file():
            return "\n".join(p.read_text() for p in parent.glob("packages/*/tests/**/*.py") if p != here)
    pytest.skip("not inside the mm monorepo")


@pytest.mark.parametrize("hook", SPECS)
def test_hook_has_a_test(hook):
    assert hook in _test_sources(), f"no test mentions hook {hook!r}"
