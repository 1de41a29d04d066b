"""Module path patterns: {*}, ranges, lists, checkpoint wrappers, and the error for a pattern matching nothing."""

from __future__ import annotations

import pytest

from mm_core.errors import ConfigError
from mm_core.testing import toy
from mm_parallel.patterns import expand, outermost
from mm_parallel.recompute import apply_recompute


def names(patterns, model) -> list[str]:
    return [name for name, _ in expand(patterns, model)]


@pytest.fixture
def model():
    return toy.ToyModel(dim=4, depth=6)


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("blocks.{*}", [f"blocks.{i}" for i in range(6)]),
        ("blocks.{0-2}", ["blocks.0", "blocks.1", "blocks.2"]),
        ("blocks.{1,3,5}", ["blocks.1", "blocks.3", "blocks.5"]),
        ("blocks.{0, 4-5}", ["blocks.0", "blocks.4", "blocks.5"]),
        ("blocks.{0-23}", [f"blocks.{i}" for i in range(6)]),
        ("blocks.{*}.fc{1,2}", [f"blocks.{i}.fc{j}" for i in range(6) for j in (1, 2)]),
        ("head", ["head"]),
    ],
)
def test_pattern_syntax(model, pattern, expected):
    assert names([pattern], model) == expected


def test_results_follow_module_order_without_duplicates(model):
    assert names(["head", "blocks.{2}", "blocks.{1-2}"], model) == ["blocks.1", "blocks.2", "head"]


def test_outermost_drops_nested_matches(model):
    found = expand(["blocks.{0-1}", "blocks.0.fc1", "head"], model)
    assert [n for n, _ in outermost(found)] == ["blocks.0", "blocks.1", "head"]


def test_paths_ignore_checkpoint_wrappers(model):
    apply_recompute(model, ["blocks.{*}"], use_reentrant=False)
    assert names(["blocks.1.fc1"], model) == ["blocks.1.fc1"]
    assert type(expand(["blocks.1"], model)[0][1]).__name__ == "CheckpointWrapper"


@pytest.mark.parametrize(
    "pattern, hint",
    [
        ("block.{*}", "modules with similar paths: blocks.0"),
        ("blocks.{7-9}", "modules with similar paths: blocks.0"),
        ("decoder.layers.{*}", "modules with similar paths: encoder, embed, cond, blocks, norm_out, head"),
    ],
)
def test_a_pattern_matching_nothing_names_it_and_close_modules(model, pattern, hint):
    with pytest.raises(ConfigError) as info:
        expand([pattern], model, "parallel.fsdp2.sub_modules_to_wrap")
    message = str(info.value)
    assert message.startswith(f"parallel.fsdp2.sub_modules_to_wrap: pattern {pattern!r} matches no module of ToyModel")
    assert hint in message


@pytest.mark.parametrize("pattern", ["blocks.{a-b}", "blocks.{3-1}", "blocks.{}", "", "blocks.{1-2-3}"])
def test_malformed_patterns_are_config_errors(model, pattern):
    with pytest.raises(ConfigError, match="pattern|not a module path"):
        expand([pattern], model)
