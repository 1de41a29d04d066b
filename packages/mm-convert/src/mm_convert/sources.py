"""TensorSource: a checkpoint's named tensors, known by shape and dtype up front and read one at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch

from mm_convert.errors import ConvertError

SHOWN = 8


def listing(keys: list[str]) -> str:
    """At most ``SHOWN`` keys, then how many more."""
    more = f" ... and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


class TensorSource(Mapping[str, torch.Tensor]):
    """A read-only mapping of names to tensors whose data is loaded only when one is looked up."""

    def __init__(self, metas: Mapping[str, torch.Tensor], load: Callable[[str], torch.Tensor], where: str) -> None:
        self.metas = dict(metas)
        self._load = load
        self.where = where

    def meta(self, key: str) -> torch.Tensor:
        """The tensor's shape and dtype as a tensor on the meta device."""
        return self.metas[key]

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.metas:
            raise KeyError(key)
        return self._load(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.metas)

    def __len__(self) -> int:
        return len(self.metas)

    def check(self, expected: Mapping[str, torch.Size], against: str) -> None:
        """Raise one ConvertError naming the missing, unexpected and wrongly shaped keys versus ``expected``."""
        missing = sorted(set(expected) - set(self.metas))
        unexpected = sorted(set(self.metas) - set(expected))
        wrong = sorted(
            f"{k} {tuple(self.metas[k].shape)} != {tuple(expected[k])}"
            for k in set(expected) & set(self.metas)
            if tuple(self.metas[k].shape) != tuple(expected[k])
        )
        problems = [
            f"{len(keys)} {what}: {listing(keys)}"
            for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong))
            if keys
        ]
        if problems:
            raise ConvertError(f"{self.where} does not match {against}: " + "; ".join(problems))
