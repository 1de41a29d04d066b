from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from mm_core.errors import DataError
from mm_data.datasets import VideoTextDataset, collate
from mm_data.formats import DatasetParam, VideoRecord, read_index
from mm_data.sampler import build_dataloader


def test_items_hold_an_8_bit_clip_and_its_prompt(shapes_dir: Path) -> None:
    dataset = VideoTextDataset(read_index(shapes_dir / "data.json"), num_frames=5, height=32, width=32)
    item = dataset[2]
    assert item["video"].shape == (3, 5, 32, 32) and item["video"].dtype == torch.uint8
    assert item["video"].float().std() > 10, "the clip has content"
    assert item["prompt"].startswith("a ") and " moving " in item["prompt"]
    assert item["index"] == 2
    assert torch.equal(dataset[2]["video"], item["video"]), "a sample reads the same clip every time"


def test_tokenizer_output_is_merged_and_collated(shapes_dir: Path) -> None:
    def tokenizer(prompt: str) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([len(prompt), 1]), "attention_mask": torch.ones(2, dtype=torch.long)}

    dataset = VideoTextDataset(read_index(shapes_dir / "data.json"), 5, 32, 32, tokenizer=tokenizer)
    loader = build_dataloader(dataset, batch_size=3, dp_rank=0, dp_size=1, seed=0, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["video"].shape == (3, 3, 5, 32, 32)
    assert isinstance(batch["prompt"], list) and len(batch["prompt"]) == 3
    assert batch["input_ids"].shape == (3, 2)
    assert batch["input_ids"][:, 0].tolist() == [len(p) for p in batch["prompt"]]
    assert batch["index"].dtype == torch.long


def test_from_param_reads_the_index(shapes_dir: Path) -> None:
    param = DatasetParam(data_path=str(shapes_dir / "data.json"), num_frames=9, max_height=16, max_width=16)
    dataset = VideoTextDataset.from_param(param)
    assert len(dataset) == 6 and dataset[0]["video"].shape == (3, 9, 16, 16)
    assert dataset.shapes()[0] == (9, 32, 32)


@pytest.fixture
def mixed_records(shapes_dir: Path, make_counter_video, tmp_path: Path) -> list[VideoRecord]:
    good = read_index(shapes_dir / "data.json")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00" * 500)
    return [
        good[0],
        dataclasses.replace(good[1], path=tmp_path / "missing.mp4"),
        dataclasses.replace(good[2], path=corrupt),
        dataclasses.replace(good[3], path=make_counter_video(4)),
        dataclasses.replace(good[4], caption=["not", "a", "string"]),
        good[5],
    ]


def test_skip_mode_returns_the_next_good_sample_and_counts(mixed_records, caplog) -> None:
    dataset = VideoTextDataset(mixed_records, num_frames=9, height=32, width=32, on_bad_sample="skip")
    with caplog.at_level(logging.WARNING, logger="mm.data"):
        assert dataset[1]["index"] == 5
    assert dataset.bad_samples == 4
    assert len(caplog.records) == 4
    messages = [r.getMessage() for r in caplog.records]
    assert all("\n" not in m and m.startswith("skipping bad sample: ") for m in messages)
    assert "missing.mp4 does not exist" in messages[0]
    assert "corrupt.mp4 cannot be decoded" in messages[1]
    assert "has 4 frames but 9 are needed" in messages[2]
    assert "caption ['not', 'a', 'string'] is not a string" in messages[3]
    assert dataset[0]["index"] == 0 and dataset[5]["index"] == 5
    assert dataset.bad_samples == 4


@pytest.mark.parametrize(
    ("index", "message"),
    [(1, "missing.mp4 does not exist"), (2, "corrupt.mp4 cannot be decoded"), (3, "has 4 frames but 9 are needed"),
     (4, r"sample 4 \(.*\): caption \['not', 'a', 'string'\] is not a string")],
)
def test_error_mode_raises_one_line(mixed_records, index: int, message: str) -> None:
    dataset = VideoTextDataset(mixed_records, num_frames=9, height=32, width=32, on_bad_sample="error")
    with pytest.raises(DataError, match=message) as info:
        dataset[index]
    assert "\n" not in str(info.value)


def test_all_bad_is_an_error(tmp_path: Path) -> None:
    dataset = VideoTextDataset([VideoRecord(tmp_path / "x.mp4", "x")], 5, 16, 16)
    with pytest.raises(DataError, match="no sample of the 1 in the dataset can be read; the first: "):
        dataset[0]


def test_an_entry_without_caption_names_the_key(tmp_path: Path) -> None:
    dataset = VideoTextDataset([VideoRecord(tmp_path / "x.mp4", None)], 5, 16, 16, on_bad_sample="error")
    with pytest.raises(DataError, match=r"sample 0 \(.*x\.mp4\): its index entry has no caption \(key 'cap' or "):
        dataset[0]


def test_worker_processes_give_the_same_batches(shapes_dir: Path) -> None:
    dataset = VideoTextDataset(read_index(shapes_dir / "data.json"), 5, 16, 16)

    def batches(num_workers: int) -> list[dict]:
        loader = build_dataloader(dataset, 2, 0, 1, seed=1, num_workers=num_workers, collate_fn=collate)
        return list(loader)

    for a, b in zip(batches(0), batches(2), strict=True):
        assert a["prompt"] == b["prompt"] and torch.equal(a["video"], b["video"])
