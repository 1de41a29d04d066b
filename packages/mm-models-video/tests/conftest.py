"""Shared fixtures: a private data cache and a tiny WanT2V."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from wan_testing import wan_config  # noqa: E402

from mm_models_video.wan2_1.build import build_model  # noqa: E402
from mm_models_video.wan2_1.model import WanT2V  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def mm_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated datasets go to a per-session folder instead of ~/.cache/mm."""
    path = tmp_path_factory.mktemp("mm_cache")
    old = os.environ.get("MM_CACHE_DIR")
    os.environ["MM_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MM_CACHE_DIR")
    else:
        os.environ["MM_CACHE_DIR"] = old


@pytest.fixture
def tiny_model() -> WanT2V:
    """A freshly built tiny WanT2V."""
    return build_model(wan_config().model)
