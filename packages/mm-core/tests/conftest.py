"""Shared set-up for mm-core's tests."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).parent
# Test modules import each other's helpers by name (test_bench_data from test_bench_scripts).
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
