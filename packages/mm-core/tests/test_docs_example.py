"""The plugin in docs/plugins.md must train as the page says."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest


def _example_source() -> str:
    for parent in Path(__file__).resolve().parents:
        page = parent / "docs" / "plugins.md"
        if page.is_file():
            section = page.read_text().split("## A complete plugin", 1)[1]
            return re.search(r"```python\n(.*?)```", section, re.S).group(1)
    pytest.skip("docs/plugins.md is not beside this package")


def test_documented_plugin_trains(tmp_path, monkeypatch, mm_train):
    (tmp_path / "my_plugin.py").write_text(_example_source())
    monkeypatch.syspath_prepend(str(tmp_path))
    result = mm_train(["my_plugin"], "training.save_interval=0")
    assert sorted(result.losses) == list(range(1, 51))
    assert sum(list(result.losses.values())[-5:]) < sum(list(result.losses.values())[:5])
    sys.modules.pop("my_plugin", None)
