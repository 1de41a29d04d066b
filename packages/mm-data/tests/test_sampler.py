from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from mm_core.data_iter import DataIterator
from mm_core.errors import ConfigError, DataError
from mm_data.datasets import collate
from mm_data.sampler import ResumableBatchSampler, bucket_keys, build_dataloader


class Range(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


class Items(Range):
    def __getitem__(self, index: int) -> dict[str, int]:
        return {"index": index}


def rank_batches(n: int, dp_size: int, **kwargs) -> list[list[list[int]]]:
    return [list(ResumableBatchSampler(n, 2, rank, dp_size, **kwargs)) for rank in range(dp_size)]


def test_ranks_get_disjoint_batches_that_cover_the_set() -> None:
    rank0, rank1 = rank_batches(16, 2, seed=3)
    seen0, seen1 = {i for b in rank0 for i in b}, {i for b in rank1 for i in b}
    assert len(rank0) == len(rank1) == 4
    assert not seen0 & seen1
    assert seen0 | seen1 == set(range(16))


def test_without_drop_last_ranks_still_cover_everything_in_full_batches() -> None:
    batches = rank_batches(13, 2, seed=0, drop_last=False)
    assert len(batches[0]) == len(batches[1]) == 4
    assert all(len(b) == 2 for rank in batches for b in rank)
    assert {i for rank in batches for b in rank for i in b} == set(range(13))
    assert len(ResumableBatchSampler(13, 2, 0, 2, drop_last=False)) == 4
    assert len(ResumableBatchSampler(13, 2, 0, 2)) == 3


def test_shuffle_depends_on_seed_and_epoch() -> None:
    sampler = ResumableBatchSampler(32, 4, seed=1)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(ResumableBatchSampler(32, 4, seed=2)) != first
    assert list(ResumableBatchSampler(8, 4, shuffle=False)) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_skip_resumes_exactly_where_a_straight_run_was() -> None:
    straight = ResumableBatchSampler(20, 2, 1, 2, seed=5)
    straight.set_epoch(3)
    expected = list(straight)
    for n in (0, 2, 4, 5):
        resumed = ResumableBatchSampler(20, 2, 1, 2, seed=5)
        resumed.set_epoch(3)
        resumed.skip(n)
        assert len(resumed) == 5 - n
        assert list(resumed) == expected[n:]
        assert list(resumed) == expected, "skip only applies to the next iteration"


def test_data_iterator_resumes_the_same_sequence_through_epochs() -> None:
    def loader():
        return build_dataloader(Range(10), batch_size=2, dp_rank=0, dp_size=1, seed=7)

    straight = DataIterator(loader())
    batches = [next(straight).tolist() for _ in range(12)]
    for stop in (3, 5, 7):
        first = DataIterator(loader())
        for _ in range(stop):
            next(first)
        resumed = DataIterator(loader())
        resumed.load_state_dict(first.state_dict())
        assert [next(resumed).tolist() for _ in range(12 - stop)] == batches[stop:]


def _stream(batch_size: int, dp_size: int, n: int = 24, rank: int = 0, **kwargs) -> DataIterator:
    """A data iterator of ``rank`` whose every draw consumes ``batch_size × dp_size`` samples of the global stream."""
    loader = build_dataloader(Range(n), batch_size, dp_rank=rank, dp_size=dp_size, seed=3, **kwargs)
    return DataIterator(loader, samples_per_batch=batch_size * dp_size)


def test_a_position_resumes_at_the_same_sample_with_another_batch_or_data_parallel_size() -> None:
    # Two draws of 4 consumed samples 0..7 of the stream; one process reading 2 or 8 at a time, or 4 ranks
    # reading 1 each, continue with samples 8, 9, ... in the same order.
    saved = _stream(4, 1)
    stream = [i for _ in range(6) for i in next(saved).tolist()]  # one epoch of 24
    first = _stream(4, 1)
    next(first), next(first)
    for batch_size, dp_size in [(2, 1), (1, 4), (8, 1)]:
        ranks = [_stream(batch_size, dp_size, rank=rank) for rank in range(dp_size)]
        for it in ranks:
            it.load_state_dict(first.state_dict())
        draws = [[i for it in ranks for i in next(it).tolist()] for _ in range(16 // (batch_size * dp_size))]
        assert [i for draw in draws for i in draw] == stream[8:24]


@pytest.mark.parametrize(
    ("sizes", "n", "reason"),
    [
        ((4, 3), 24, "it stopped after 8 samples of epoch 0; resume with micro_batch_size × data-parallel size = "
                     "1 or 2 or 4 or 8"),
        ((4, 8), 28, "an epoch holds 28 samples in batches of 4 but 24 in batches of 8; resume with micro_batch_size "
                     "× data-parallel size = 1 or 2 or 4"),
    ],
)
def test_a_position_that_another_size_cannot_continue_exactly_is_one_error(sizes, n, reason) -> None:
    saved, new = sizes
    first = _stream(saved, 1, n)
    next(first), next(first)
    resumed = _stream(new, 1, n)
    with pytest.raises(DataError) as info:
        resumed.load_state_dict(first.state_dict())
    assert str(info.value) == (
        f"the train data cannot continue exactly: the checkpoint read {saved} samples per micro-step "
        f"(micro_batch_size × data-parallel size), this run reads {new}, and {reason}"
    )


def test_batches_grouped_by_shape_resume_only_with_the_same_size() -> None:
    keys = [i % 2 for i in range(16)]
    first = _stream(2, 1, 16, buckets=keys)
    next(first)
    resumed = _stream(4, 1, 16, buckets=keys)
    with pytest.raises(DataError, match="grouped by shape, and how the groups are cut depends on the batch size; "
                                        "resume with micro_batch_size × data-parallel size = 2$"):
        resumed.load_state_dict(first.state_dict())


def test_bucketing_puts_one_shape_in_each_batch() -> None:
    shapes = [(17, 64, 64)] * 7 + [(9, 64, 64)] * 5 + [(17, 32, 48)] * 6
    keys = bucket_keys(shapes, group_frame=True, group_resolution=True)
    for drop_last in (True, False):
        per_rank = rank_batches(len(shapes), 2, seed=0, buckets=keys, drop_last=drop_last)
        assert len(per_rank[0]) == len(per_rank[1])
        for global_batch in zip(*per_rank):
            assert len({shapes[i] for b in global_batch for i in b}) == 1
        if not drop_last:
            assert {i for rank in per_rank for b in rank for i in b} == set(range(len(shapes)))
    assert bucket_keys(shapes, group_frame=False, group_resolution=False) is None
    assert bucket_keys(shapes, group_frame=True, group_resolution=False)[-1] == (17, None, None)


def test_build_dataloader_uses_the_resumable_sampler() -> None:
    loader = build_dataloader(Range(8), batch_size=4, dp_rank=1, dp_size=2, seed=0, shuffle=False)
    assert isinstance(loader.batch_sampler, ResumableBatchSampler)
    assert [b.tolist() for b in loader] == [[4, 5, 6, 7]]
    assert torch.is_tensor(next(iter(loader)))


def test_persistent_workers_give_the_same_resumable_sequence_and_outlive_epochs() -> None:
    def loader(**workers):
        return build_dataloader(Range(10), batch_size=2, dp_rank=0, dp_size=1, seed=7, **workers)

    straight = DataIterator(loader())
    expected = [next(straight).tolist() for _ in range(12)]
    pooled = loader(num_workers=2, prefetch_factor=1, persistent_workers=True)
    assert pooled.prefetch_factor == 1 and pooled.persistent_workers
    it = DataIterator(pooled)
    assert [next(it).tolist() for _ in range(12)] == expected  # 12 batches: two epochs and a bit of a third
    assert pooled._iterator is not None, "persistent workers stay up between epochs"


def test_worker_options_without_workers_are_ignored_and_a_bad_prefetch_is_one_error() -> None:
    plain = build_dataloader(Range(4), batch_size=2, dp_rank=0, dp_size=1, seed=0, prefetch_factor=4,
                             persistent_workers=True)
    assert plain.num_workers == 0 and not plain.persistent_workers
    with pytest.raises(ConfigError, match="dataloader_param.prefetch_factor must be at least 1, got 0"):
        build_dataloader(Range(4), batch_size=2, dp_rank=0, dp_size=1, seed=0, num_workers=1, prefetch_factor=0)


def test_items_carry_the_epoch_they_were_drawn_in_through_workers_and_resume() -> None:
    def loader(**workers):
        return build_dataloader(Items(6), batch_size=2, dp_rank=0, dp_size=1, seed=7, collate_fn=collate,
                                with_epoch=True, **workers)

    def pairs(batch: dict) -> list[tuple[int, int]]:
        return list(zip(batch["epoch"].tolist(), batch["index"].tolist()))

    straight = DataIterator(loader())
    expected = [pairs(next(straight)) for _ in range(7)]
    plain = DataIterator(build_dataloader(Range(6), batch_size=2, dp_rank=0, dp_size=1, seed=7))
    assert expected == [[(epoch, i) for i in next(plain).tolist()] for epoch in (0, 0, 0, 1, 1, 1, 2)]
    pooled = DataIterator(loader(num_workers=2, persistent_workers=True))
    assert [pairs(next(pooled)) for _ in range(7)] == expected
    resumed = DataIterator(loader())
    resumed.load_state_dict({"epoch": 1, "position": 1})
    assert [pairs(next(resumed)) for _ in range(3)] == expected[4:]
