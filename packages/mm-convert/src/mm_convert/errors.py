"""The one error type mm-convert reports as a single line."""

from __future__ import annotations

from mm_core.errors import MMError


class ConvertError(MMError):
    """A conversion cannot be done as asked: a bad option, a missing file or a checkpoint that does not match."""
