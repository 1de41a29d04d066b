"""The shared toy plugin, mm_core.testing.toy: a model section it cannot build is one clear error."""

from __future__ import annotations

import pytest

from mm_core.errors import ConfigError
from mm_core.testing import toy


def test_heads_that_do_not_divide_the_width_are_one_config_error(mm_train):
    with pytest.raises(ConfigError, match=r"^model.heads 3 must divide model.dim 8$"):
        mm_train([toy], "model.heads=3")
