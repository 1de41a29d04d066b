"""mm's pytest plugin (loaded by pytest automatically): fixtures, and which hooks the tests called.

When a run collects the whole monorepo's tests, a hookspec that no test called fails the run: a hook whose name
only appears in test text does not count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pluggy
import pytest

from mm_core import plugins
from mm_core.testing import run_training
from mm_core.trainer import TrainResult

SPECS = frozenset(plugins.hook_names())
called_hooks: set[str] = set()
"""Names of the hooks that any plugin manager of this test session has called."""


def _record(hook_name: str, hook_impls, kwargs) -> None:
    called_hooks.add(hook_name)


def _recording(factory):
    def new_plugin_manager(*args, **kwargs) -> pluggy.PluginManager:
        pm = factory(*args, **kwargs)
        pm.add_hookcall_monitoring(_record, lambda *_: None)
        return pm

    return new_plugin_manager


def pytest_configure(config: pytest.Config) -> None:
    """Record the hooks every plugin manager made by mm_core.plugins calls."""
    plugins.new_plugin_manager = _recording(plugins.new_plugin_manager)


def _whole_monorepo(session: pytest.Session) -> bool:
    """True when the session ran every package's tests: paths from ``testpaths`` (none given), no -k, not --co."""
    config = session.config
    return (config.args_source is pytest.Config.ArgsSource.TESTPATHS and not config.option.keyword
            and not config.option.collectonly)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail a whole-monorepo run in which some hookspec was never called."""
    missing = sorted(SPECS - called_hooks)
    if missing and exitstatus == 0 and session.testscollected and _whole_monorepo(session):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"hook coverage: no test called hook(s) {', '.join(missing)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def mm_pm() -> pluggy.PluginManager:
    """A fresh plugin manager with mm's hookspecs, mm-core's defaults and the installed engines."""
    return plugins.new_plugin_manager()


@pytest.fixture
def mm_train(tmp_path: Path):
    """Call ``mm_train(plugins, *overrides)`` to train on the CPU into a temp dir; returns a TrainResult."""

    def train(plugins: Sequence[str | ModuleType], *overrides: str, output_dir: Path | None = None) -> TrainResult:
        return run_training(plugins, output_dir or tmp_path / "run", ["training.device=cpu", *overrides])

    return train


@pytest.fixture
def restored_logging():
    """Put the root logger's handlers back after the test: ``mm``'s main points them at the test's captured
    stderr, which is closed once the test ends."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:], root.level = handlers, level
