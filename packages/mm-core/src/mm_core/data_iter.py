"""An endless, resumable iterator over a plugin's epoch-based iterable of micro-batches.

Its position is the number of samples of the global stream consumed in the current epoch, so a run resumes
exactly with another micro-batch size, data-parallel size or world size wherever the stream allows it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from mm_core.errors import DataError


def _call_on_loader(iterable: Any, method: str, *args: Any) -> bool:
    """Call ``method`` on the iterable, or on its batch sampler / sampler; True if one had it."""
    fn = _sampler_has(iterable, method)
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

    ``samples_per_batch`` is how many samples of the global stream one ``next()`` consumes on every data-parallel
    rank together (micro-batch size × data-parallel size). A state saved with another value continues at the same
    sample when that is exact, and is refused with the reason and the sizes that would be exact when it is not.

    A consumer that reads batches ahead of the step that trains on them (the video families' encoder engines) takes
    a :meth:`snapshot` after each read and calls :meth:`served` with it when that batch is trained on: the
    checkpointed position is then the one after the last batch served, so a resumed run reads the rest again.
    """

    def __init__(self, iterable: Iterable, name: str = "train", seed: int = 0, samples_per_batch: int = 1) -> None:
        self.iterable = iterable
        self.name = name
        self.seed = seed
        self.samples_per_batch = samples_per_batch
        self.epoch = 0
        self.position = 0
        self._skip = 0
        self._it: Iterator | None = None
        self._served: dict | None = None

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

    def snapshot(self) -> dict:
        """The position now, after every batch drawn so far (what :meth:`state_dict` gives until :meth:`served`)."""
        return {"epoch": self.epoch, "position": self.position, "samples_per_batch": self.samples_per_batch,
                "epoch_batches": _length(self.iterable)}

    def served(self, snapshot: dict) -> None:
        """The batch drawn just before ``snapshot`` is the one the current step trains on."""
        self._served = dict(snapshot)

    def state_dict(self) -> dict:
        """Epoch, batches drawn in it (up to the last one served, when batches are read ahead), and the global
        samples per batch with the batches an epoch holds."""
        return dict(self._served) if self._served is not None else self.snapshot()

    def load_state_dict(self, state: dict) -> None:
        """Continue after the samples recorded in ``state`` on the next ``next()``."""
        self._served = None
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        saved = int(state.get("samples_per_batch") or self.samples_per_batch)
        if saved != self.samples_per_batch:
            self.position = self._rebatched(self.position * saved, saved, state.get("epoch_batches"))
        self._skip = self.position
        self._it = None

    def _rebatched(self, consumed: int, saved: int, saved_epoch_batches: int | None) -> int:
        """The batches of ``samples_per_batch`` that hold the first ``consumed`` samples; DataError if not exact."""
        new = self.samples_per_batch
        saved_epoch = saved_epoch_batches * saved if saved_epoch_batches is not None else None
        length = _length(self.iterable)
        epoch = length * new if length is not None else None
        grouped = bool(_sampler_has(self.iterable, "grouped"))
        same_epochs = None in (saved_epoch, epoch) or saved_epoch == epoch
        if consumed % new == 0 and not grouped and same_epochs:
            return consumed // new
        if grouped:
            why = "its batches are grouped by shape, and how the groups are cut depends on the batch size"
        elif consumed % new:
            why = f"it stopped after {consumed} samples of epoch {self.epoch}"
        else:
            why = f"an epoch holds {saved_epoch} samples in batches of {saved} but {epoch} in batches of {new}"
        sizes = " or ".join(map(str, [saved] if grouped else self._exact_sizes(consumed, saved, saved_epoch)))
        raise DataError(
            f"the {self.name} data cannot continue exactly: the checkpoint read {saved} samples per micro-step "
            f"(micro_batch_size × data-parallel size), this run reads {new}, and {why}; resume with "
            f"micro_batch_size × data-parallel size = {sizes}"
        )

    def _exact_sizes(self, consumed: int, saved: int, saved_epoch: int | None) -> list[int]:
        """Samples per micro-step that would continue exactly in an ungrouped stream (the saved one, and others the
        sampler can tell)."""
        epoch_samples = _sampler_has(self.iterable, "epoch_samples")
        if not callable(epoch_samples) or saved_epoch is None:
            return [saved]
        return [size for size in range(1, saved_epoch + 1)
                if consumed % size == 0 and epoch_samples(size) == saved_epoch][:8]


def _length(iterable: Any) -> int | None:
    """Batches per epoch, when the iterable says."""
    try:
        return len(iterable)
    except TypeError:
        return None


def _sampler_has(iterable: Any, name: str) -> Any:
    """Attribute ``name`` of the iterable or of its batch sampler / sampler (the first that has it), else None."""
    for target in (iterable, getattr(iterable, "batch_sampler", None), getattr(iterable, "sampler", None)):
        value = getattr(target, name, None)
        if value is not None:
            return value
    return None
