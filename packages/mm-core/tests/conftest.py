"""Shared fixtures for mm-core's tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
# The toy plugin is imported by module path, as a user's own plugin module would be.
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@pytest.fixture
def toy_env(monkeypatch) -> dict:
    """Environment for a subprocess that must import ``toy_plugin`` by module path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env
