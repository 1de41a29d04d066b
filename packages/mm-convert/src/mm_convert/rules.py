"""Name rules between the Hugging Face layout and another one: renames, and tensors fused from several.

A rule names modules or tensors, ``{i}`` standing for a layer index; a key matches a rule when it is the
rule's name, optionally followed by one more component (``.weight``, ``.bias``), which is carried over.
Every key must match a rule: one that does not is an error, never silently copied.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mm_convert.errors import ConvertError
from mm_convert.sources import TensorSource, listing

Join = Callable[[list[torch.Tensor]], torch.Tensor]
Split = Callable[[torch.Tensor], list[torch.Tensor]]


def _one(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0]


def _as_list(tensor: torch.Tensor) -> list[torch.Tensor]:
    return [tensor]


@dataclass(frozen=True)
class Rule:
    """The ``mm`` tensor made by ``join`` from the ``hf`` tensors, and ``split`` giving them back."""

    hf: tuple[str, ...]
    mm: str
    join: Join = _one
    split: Split = _as_list


def rename(hf: str, mm: str) -> Rule:
    """``hf`` is called ``mm`` in the other layout."""
    return Rule((hf,), mm)


def concat(hf: Sequence[str], mm: str) -> Rule:
    """``mm`` is the ``hf`` tensors stacked along dim 0 (gate and up of a GLU)."""
    count = len(hf)
    return Rule(tuple(hf), mm, lambda ts: torch.cat(ts), lambda t: list(t.chunk(count)))


def interleave(parts: list[torch.Tensor], groups: int) -> torch.Tensor:
    """q1 k1 v1 q2 k2 v2 ...: each part cut into ``groups`` along dim 0, then taken group by group."""
    pieces = [part.chunk(groups) for part in parts]
    return torch.cat([p for group in zip(*pieces) for p in group])


def deinterleave(tensor: torch.Tensor, groups: int, sizes: Sequence[int]) -> list[torch.Tensor]:
    """The inverse of :func:`interleave`; ``sizes`` are the parts' full lengths along dim 0."""
    per_group = [size // groups for size in sizes]
    columns = zip(*(g.split(per_group) for g in tensor.chunk(groups)))
    return [torch.cat(column) for column in columns]


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(\d+)") + r"(\.[^.]+)?$")


class RuleSet:
    """Converts a TensorSource between the ``hf`` names and the ``mm`` names of its rules, lazily."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self._hf = [[_pattern(name) for name in rule.hf] for rule in self.rules]
        self._mm = [_pattern(rule.mm) for rule in self.rules]

    @staticmethod
    def _name(template: str, layer: str | None, suffix: str | None) -> str:
        return (template.replace("{i}", layer) if layer is not None else template) + (suffix or "")

    @staticmethod
    def _match(pattern: re.Pattern, key: str) -> tuple[str | None, str | None] | None:
        found = pattern.match(key)
        if not found:
            return None
        groups = found.groups()
        return (groups[0], groups[1]) if len(groups) == 2 else (None, groups[0])

    def find_hf(self, key: str) -> tuple[Rule, str, int] | None:
        """The rule a Hugging Face ``key`` falls under, its name in the other layout and its part of the rule's
        ``hf`` tensors; None when no rule names it."""
        for rule, patterns in zip(self.rules, self._hf):
            for j, pattern in enumerate(patterns):
                hit = self._match(pattern, key)
                if hit is not None:
                    return rule, self._name(rule.mm, *hit), j
        return None

    def to_mm(self, source: TensorSource) -> TensorSource:
        """``source`` (Hugging Face names) under the other layout's names, fused tensors joined on access."""
        parts: dict[str, tuple[Rule, list[str | None]]] = {}
        unknown = []
        for key in source:
            found = self.find_hf(key)
            if found is None:
                unknown.append(key)
                continue
            rule, target, j = found
            slot = parts.setdefault(target, (rule, [None] * len(rule.hf)))
            slot[1][j] = key
        if unknown:
            raise ConvertError(f"{source.where}: {len(unknown)} keys have no known name mapping: "
                               f"{listing(sorted(unknown))}")
        alone = sorted(f"{target} lacks a part next to {', '.join(k for k in keys if k)}"
                       for target, (_, keys) in parts.items() if None in keys)
        if alone:
            raise ConvertError(f"{source.where}: fused tensors are incomplete: {listing(alone)}")
        metas = {target: rule.join([source.meta(k) for k in keys]) for target, (rule, keys) in parts.items()}

        def load(target: str) -> torch.Tensor:
            rule, keys = parts[target]
            return rule.join([source[k] for k in keys])

        return TensorSource(metas, load, source.where)

    def to_hf(self, source: TensorSource) -> TensorSource:
        """``source`` (the other layout's names) under Hugging Face names, fused tensors split on access."""
        origin: dict[str, tuple[Rule, str, int]] = {}
        unknown = []
        for key in source:
            for rule, pattern in zip(self.rules, self._mm):
                hit = self._match(pattern, key)
                if hit is not None:
                    for j, template in enumerate(rule.hf):
                        origin[self._name(template, *hit)] = (rule, key, j)
                    break
            else:
                unknown.append(key)
        if unknown:
            raise ConvertError(f"{source.where}: {len(unknown)} keys have no known name mapping: "
                               f"{listing(sorted(unknown))}")
        metas = {name: rule.split(source.meta(key))[j] for name, (rule, key, j) in origin.items()}
        last: dict[str, list[torch.Tensor]] = {}

        def load(name: str) -> torch.Tensor:
            rule, key, j = origin[name]
            if key not in last:  # the parts of one fused tensor are read one after another: keep the last
                last.clear()
                last[key] = rule.split(source[key])
            return last[key][j]

        return TensorSource(metas, load, source.where)
