"""Shared fixtures for mm-core's tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


@pytest.fixture
def toy_env(monkeypatch) -> dict:
    """Environment for a subprocess that must import ``toy_plugin`` by module path."""
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(autouse=True)
def _tests_on_path():
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
