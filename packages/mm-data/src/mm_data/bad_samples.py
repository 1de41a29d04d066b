"""What happens to a sample that cannot be read: the data section's ``on_bad_sample`` (skip or error)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from mm_core.errors import ConfigError, DataError

log = logging.getLogger("mm.data")

POLICIES = ("skip", "error")
KEPT_REASONS = 5


@dataclass
class BadSamples:
    """Applies ``on_bad_sample`` to each unreadable sample: ``error`` raises, ``skip`` logs and counts it."""

    policy: str = "skip"
    count: int = 0
    reasons: list[str] = field(default_factory=list)
    """The first few skipped samples' errors, for a summary."""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"on_bad_sample must be 'skip' or 'error', got {self.policy!r}")

    def skip(self, exc: DataError) -> None:
        """Raise ``exc`` under ``error``; under ``skip`` log it, count it and keep its message if among the first."""
        if self.policy == "error":
            raise exc
        self.count += 1
        if len(self.reasons) < KEPT_REASONS:
            self.reasons.append(str(exc))
        log.warning("skipping bad sample: %s", exc)
