"""Preprocessing is cached by data and processor settings and gives the same samples with worker processes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mm_data.mllm_format import read_mllm_dataset
from mm_models_vlm.qwen2_5_vl import cache
from mm_models_vlm.qwen2_5_vl.synthetic import make_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A generated mllm_format dataset of 12 shape images."""
    index = make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_samples=12)
    return index, read_mllm_dataset(str(index), index.parent)


def test_second_load_reads_the_cache(shapes, tiny_dir, settings, tmp_path, monkeypatch):
    index, records = shapes
    target = tmp_path / "cache.pt"
    samples, stats = cache.load_or_encode(records, target, tiny_dir, settings, workers=1, chunk_size=4)
    assert target.is_file() and stats.samples == 12

    def no_encoding(*args, **kwargs):
        raise AssertionError("the dataset was tokenized again")

    monkeypatch.setattr(cache, "encode_all", no_encoding)
    again, again_stats = cache.load_or_encode(records, target, tiny_dir, settings, workers=1, chunk_size=4)
    assert [s.input_ids for s in again] == [s.input_ids for s in samples] and again_stats == stats
    with pytest.raises(AssertionError, match="tokenized again"):
        cache.load_or_encode(records, target, tiny_dir, settings, workers=1, chunk_size=4, overwrite=True)


def test_key_follows_data_processor_and_settings(shapes, tiny_dir, settings, tmp_path):
    index, _ = shapes
    key = cache.cache_key([str(index)], {}, tiny_dir, settings)
    assert cache.cache_key([str(index)], {}, tiny_dir, settings) == key
    assert cache.cache_key([str(index)], {}, tiny_dir, dataclasses.replace(settings, cutoff_len=99)) != key
    assert cache.cache_key([str(index)], {"attr": {"images": "imgs"}}, tiny_dir, settings) != key
    edited = tmp_path / "data.json"
    edited.write_text(json.dumps(json.loads(index.read_text())[:-1]))
    assert cache.cache_key([str(edited)], {}, tiny_dir, settings) != key
    other_processor = tmp_path / "proc"
    other_processor.mkdir()
    (other_processor / "tokenizer.json").write_text("{}")
    assert cache.cache_key([str(index)], {}, other_processor, settings) != key


def test_worker_processes_give_the_same_samples(shapes, tiny_dir, settings):
    _, records = shapes
    serial, _ = cache.encode_all(records, tiny_dir, settings, workers=1, chunk_size=5)
    parallel, _ = cache.encode_all(records, tiny_dir, settings, workers=2, chunk_size=5)
    assert [dataclasses.asdict(s) for s in parallel] == [dataclasses.asdict(s) for s in serial]
