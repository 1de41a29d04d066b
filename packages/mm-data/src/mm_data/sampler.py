"""A data-parallel batch sampler that shuffles per epoch, buckets by shape, resumes mid-epoch and tags the epoch."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mm_core.errors import ConfigError
from mm_core.runtime import Runtime


class ResumableBatchSampler(Sampler[list[int]]):
    """Yields this rank's batches of dataset indices for one epoch.

    Each epoch, the indices are grouped by bucket (one bucket when ``buckets`` is None), shuffled
    with ``seed + epoch`` and cut into global batches of ``batch_size * dp_size`` indices of one
    bucket; rank ``dp_rank`` takes its slice of each, so ranks see disjoint indices and the same
    number of batches. A bucket's incomplete last global batch is dropped with ``drop_last``, else
    filled by repeating that bucket's indices. ``skip(n)`` makes the next iteration start after
    its first ``n`` batches. Without buckets the order of the samples does not depend on
    ``batch_size * dp_size``, so a run resumes exactly on another layout (see ``epoch_samples``). With
    ``with_epoch`` each index comes as an ``(epoch, index)`` pair, the keys of an :class:`EpochTagged` dataset.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        buckets: Sequence[Hashable] | None = None,
        with_epoch: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= dp_rank < dp_size:
            raise ConfigError(f"dp_rank {dp_rank} must be in [0, dp_size {dp_size})")
        if buckets is not None and len(buckets) != num_samples:
            raise ConfigError(f"buckets has {len(buckets)} entries for {num_samples} samples")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.buckets = list(buckets) if buckets is not None else [None] * num_samples
        self.with_epoch = with_epoch
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch`` from the next iteration on."""
        self.epoch = epoch

    def skip(self, num_batches: int) -> None:
        """Start the next iteration after its first ``num_batches`` batches (for resuming mid-epoch)."""
        self._skip = num_batches

    @property
    def grouped(self) -> bool:
        """Whether batches are grouped by shape: then how a bucket is cut into batches depends on their size."""
        return len(set(self.buckets)) > 1

    def epoch_samples(self, global_batch: int) -> int:
        """Samples an epoch holds when cut into global batches of ``global_batch`` (after drop_last or padding)."""
        counts: dict[Hashable, int] = {}
        for key in self.buckets:
            counts[key] = counts.get(key, 0) + 1
        whole = (lambda n: n // global_batch) if self.drop_last else (lambda n: -(-n // global_batch))
        return sum(whole(n) * global_batch for n in counts.values())

    def _global_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        groups: dict[Hashable, list[int]] = {}
        for index, key in enumerate(self.buckets):
            groups.setdefault(key, []).append(index)
        size = self.batch_size * self.dp_size
        batches = []
        for indices in groups.values():
            if self.shuffle:
                indices = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
            if not self.drop_last and len(indices) % size:
                indices = indices + [indices[i % len(indices)] for i in range(size - len(indices) % size)]
            batches += [indices[i : i + size] for i in range(0, len(indices) - size + 1, size)]
        if self.shuffle and len(groups) > 1:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int] | list[tuple[int, int]]]:
        skip, self._skip = self._skip, 0
        rank_slice = slice(self.dp_rank * self.batch_size, (self.dp_rank + 1) * self.batch_size)
        batches = [batch[rank_slice] for batch in self._global_batches()[skip:]]
        if self.with_epoch:
            return iter([[(self.epoch, index) for index in batch] for batch in batches])
        return iter(batches)

    def __len__(self) -> int:
        return max(len(self._global_batches()) - self._skip, 0)


class EpochTagged(Dataset):
    """A dataset of dict items read with ``(epoch, index)`` keys: item ``index`` with an ``"epoch"`` entry added.

    The item keeps its own entries, ``"index"`` included (a dataset that replaces a bad sample names the one
    it read), so a batch alone says which (epoch, sample) each of its rows is. A dataset whose ``epoch_keyed``
    is true is read with the ``(epoch, index)`` key itself (its items differ by epoch: caption dropout).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        item = self.dataset[key] if getattr(self.dataset, "epoch_keyed", False) else self.dataset[index]
        return {**item, "epoch": epoch}


def bucket_keys(
    shapes: Sequence[tuple[int | None, int | None, int | None]], group_frame: bool, group_resolution: bool
) -> list[tuple[int | None, int | None, int | None]] | None:
    """Per-sample bucket keys from (num_frames, height, width) metadata; None when neither grouping is on."""
    if not (group_frame or group_resolution):
        return None
    return [(f if group_frame else None, h if group_resolution else None, w if group_resolution else None)
            for f, h, w in shapes]


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    dp_rank: int,
    dp_size: int,
    seed: int,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    buckets: Sequence[Hashable] | None = None,
    prefetch_factor: int | None = None,
    persistent_workers: bool = False,
    with_epoch: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` whose batch sampler is a ResumableBatchSampler for this rank.

    ``prefetch_factor`` and ``persistent_workers`` apply to worker processes; with ``num_workers=0`` there
    are none, and they are ignored. With ``with_epoch`` each (dict) item also carries the epoch it was drawn
    in, as ``"epoch"`` (see :class:`EpochTagged`).
    """
    if prefetch_factor is not None and prefetch_factor < 1:
        raise ConfigError(f"dataloader_param.prefetch_factor must be at least 1, got {prefetch_factor}")
    sampler = ResumableBatchSampler(
        len(dataset), batch_size, dp_rank, dp_size, seed, shuffle, drop_last, buckets, with_epoch
    )
    workers = {"prefetch_factor": prefetch_factor, "persistent_workers": persistent_workers} if num_workers else {}
    return DataLoader(
        EpochTagged(dataset) if with_epoch else dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
        **workers,
    )


def build_rank_loader(
    dataset: Dataset,
    loader: Any,
    batch_size: int,
    runtime: Runtime,
    seed: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    buckets: Sequence[Hashable] | None = None,
    with_epoch: bool = False,
) -> DataLoader:
    """``build_dataloader`` for this rank of ``runtime`` with the options of a ``dataloader_param`` block ``loader``."""
    return build_dataloader(
        dataset,
        batch_size=batch_size,
        dp_rank=runtime.dp_rank,
        dp_size=runtime.dp_size,
        seed=seed,
        shuffle=loader.shuffle,
        drop_last=loader.drop_last,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory and runtime.device.type != "cpu",
        collate_fn=collate_fn,
        buckets=buckets,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
        with_epoch=with_epoch,
    )
