"""Put this folder on sys.path so spawned ranks can import the toy plugin and the workers by name."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = str(Path(__file__).parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
