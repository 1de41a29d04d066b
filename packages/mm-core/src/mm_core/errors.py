"""Errors mm reports to the user as one line instead of a traceback."""

from __future__ import annotations


class MMError(Exception):
    """A user-facing error: the CLI prints its message alone and exits with status 2."""


class ConfigError(MMError):
    """A config file, key, type or value is wrong."""


class PluginError(MMError):
    """A plugin cannot be found, loaded or used."""


class DataError(MMError):
    """A dataset file or sample is missing or unreadable."""


class CheckpointError(MMError):
    """A checkpoint is missing, incomplete or does not match the model."""


def reason(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message, or its class name when the message is empty."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
