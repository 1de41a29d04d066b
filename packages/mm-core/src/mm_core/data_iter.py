"""An endless, resumable iterator over a plugin's epoch-based iterable of micro-batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from mm_core.errors import DataError


def _call_on_loader(iterable: Any, method: str, *args: Any) -> bool:
    """Call ``method`` on the iterable, or on its sampler / batch sampler; True if one had it."""
    for target in (iterable, getattr(iterable, "batch_sampler", None), getattr(iterable, "sampler", None)):
        fn = getattr(target, method, None)
        if callable(fn):
            fn(*args)
            return True
    return False


class DataIterator(Iterator):
    """Cycles over ``iterable`` epoch after epoch and remembers its position for checkpoints.

    At each epoch it calls ``set_epoch(epoch)`` on the iterable (or its sampler) so shuffles
    differ per epoch. On resume it calls ``skip(n)`` on the iterable (or its batch sampler /
    sampler) to start after ``n`` batches without loading them; iterables without ``skip``
    are fast-forwarded by drawing and dropping ``n`` batches.
    """

    def __init__(self, iterable: Iterable, name: str = "train", seed: int = 0) -> None:
        self.iterable = iterable
        self.name = name
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._skip = 0
        self._it: Iterator | None = None

    def _start_epoch(self) -> None:
        _call_on_loader(self.iterable, "set_epoch", self.epoch)
        skip, self._skip = self._skip, 0
        skipped = bool(skip) and _call_on_loader(self.iterable, "skip", skip)
        if isinstance(self.iterable, DataLoader):
            # Worker seeds follow (seed, epoch), not the global RNG, so a resumed run draws the same.
            self.iterable.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        # Starting an epoch must not consume the global RNG (DataLoader draws from it), else
        # a resumed run's dropout and noise would diverge from a straight run's.
        with torch.random.fork_rng(devices=[]):
            self._it = iter(self.iterable)
            if not skipped:
                for _ in range(skip):
                    next(self._it)

    def __next__(self) -> Any:
        if self._it is None:
            self._start_epoch()
        try:
            item = next(self._it)
        except StopIteration:
            if self.position == 0:
                raise DataError(f"the {self.name} dataset yields no batches") from None
            self.epoch += 1
            self.position = 0
            self._start_epoch()
            try:
                item = next(self._it)
            except StopIteration:
                raise DataError(f"the {self.name} dataset yields no batches in epoch {self.epoch}") from None
        self.position += 1
        return item

    def state_dict(self) -> dict:
        """Epoch and batches consumed in it."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue after the batch recorded in ``state`` on the next ``next()``."""
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._skip = self.position
        self._it = None
