"""The one-line reason mm's error messages quote from a library's exception."""

from __future__ import annotations

from mm_core.errors import reason


def test_reason_is_the_first_non_empty_line():
    error = OSError("\n  no such file: model.safetensors  \nTraceback detail")
    assert reason(error) == "no such file: model.safetensors"


def test_an_empty_message_gives_the_exception_class():
    assert reason(KeyError()) == "KeyError"
    assert reason(ValueError("  \n ")) == "ValueError"
