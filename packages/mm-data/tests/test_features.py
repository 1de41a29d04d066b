from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mm_core.errors import DataError
from mm_data.features import FeatureDataset, FeatureWriter


def samples(n: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "latents": torch.randn(4, 2, 3, 3, generator=generator).to(torch.bfloat16),
            "prompt_embeds": torch.randn(5, 8, generator=generator),
            "prompt_mask": torch.arange(5) < i % 5,
        }
        for i in range(n)
    ]


def test_round_trip_is_bitwise(tmp_path: Path) -> None:
    written = samples(7)
    with FeatureWriter(tmp_path, shard_size=3) as writer:
        for i, sample in enumerate(written):
            writer.add(sample, prompt=f"prompt {i}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "data.jsonl", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    dataset = FeatureDataset(tmp_path)
    assert len(dataset) == 7
    for i in (0, 4, 6, 1):
        item = dataset[i]
        assert item["prompt"] == f"prompt {i}"
        for key, value in written[i].items():
            assert item[key].dtype == value.dtype and torch.equal(item[key], value)
    assert len(FeatureDataset(tmp_path / "data.jsonl")) == 7


def test_a_crash_leaves_only_complete_shards_indexed(tmp_path: Path) -> None:
    writer = FeatureWriter(tmp_path, shard_size=2)
    for sample in samples(5):
        writer.add(sample)
    # Crash before close: the last sample was never flushed; a torn index line and a temp shard are left.
    (tmp_path / ".shard-00002.safetensors.tmp").write_bytes(b"half")
    with open(tmp_path / "data.jsonl", "a") as index:
        index.write('{"sample": 4, "sha')
    dataset = FeatureDataset(tmp_path)
    assert len(dataset) == 4
    assert {entry["shard"] for entry in dataset.entries} == {"shard-00000.safetensors", "shard-00001.safetensors"}
    assert torch.equal(dataset[3]["prompt_embeds"], samples(5)[3]["prompt_embeds"])


def test_store_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no data.jsonl"):
        FeatureDataset(tmp_path)
    FeatureWriter(tmp_path, shard_size=1).add(samples(1)[0])
    with pytest.raises(DataError, match="already has a data.jsonl; write into a new folder"):
        FeatureWriter(tmp_path)
    (tmp_path / "shard-00000.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"feature shard .*shard-00000.safetensors cannot be read"):
        FeatureDataset(tmp_path)[0]


def test_mindspeed_mm_store_reads_in_mm_names_and_refuses_pickled_code(tmp_path):
    import collections
    import json as _json

    from mm_data.features import MindSpeedFeatureDataset, feature_prompts, open_feature_store

    (tmp_path / "features").mkdir()
    mask = torch.tensor([1, 1, 1, 0, 0])
    torch.save({"video": torch.ones(4, 2, 3, 3), "prompt_ids": torch.arange(10.0).reshape(5, 2), "prompt_mask": mask,
                "i2v_latents": torch.zeros(2)}, tmp_path / "features" / "a.pt")
    torch.save({"video": torch.ones(1), "extra": collections.OrderedDict(x=1)}, tmp_path / "features" / "b.pt")
    torch.save(collections.Counter(a=1), tmp_path / "features" / "c.pt")
    lines = [{"file": "features/a.pt", "captions": ["a cat"]}, {"file": "features/b.pt", "cap": "x"},
             {"file": "features/c.pt"}, {"file": "features/missing.pt"}]
    (tmp_path / "data.jsonl").write_text("".join(_json.dumps(line) + "\n" for line in lines))
    store = open_feature_store(tmp_path / "data.jsonl")
    assert isinstance(store, MindSpeedFeatureDataset) and len(store) == 4
    item = store[0]
    assert item["prompt_embeds"].tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert item["latents"].shape == (4, 2, 3, 3) and item["i2v_latents"].shape == (2,) and item["prompt"] == "a cat"
    assert feature_prompts(tmp_path) == ["a cat", "x", None, None]
    for index, message in ((2, "holds no 'video' latents"), (3, "missing.pt cannot be read")):
        with pytest.raises(DataError, match=message):
            store[index]


def test_mindspeed_mm_store_keeps_a_second_text_encoders_embeddings_whole_with_their_mask(tmp_path):
    from mm_data.features import MindSpeedFeatureDataset, MindSpeedFeatureWriter

    llm_mask, clip_mask = torch.tensor([[1, 1, 0]]), torch.tensor([[1, 0, 0, 0]])
    writer = MindSpeedFeatureWriter(tmp_path, "rank_00000.jsonl")
    tensors = {"video": torch.ones(2), "prompt_ids": [torch.ones(1, 3, 2), torch.full((1, 4, 2), 2.0)],
               "prompt_mask": [llm_mask, clip_mask]}
    writer.add("v_mp4.pt", tensors, cap="a cat", index=7)
    writer.add("w_mp4.pt", tensors, cap="a dog")
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == ["v_mp4.pt", "w_mp4.pt"]  # no temporaries
    store = MindSpeedFeatureDataset(tmp_path / "rank_00000.jsonl")
    first = store[0]
    assert first["prompt_embeds"].shape == (2, 2) and first["prompt_embeds_2"].shape == (4, 2)
    assert first["prompt_mask_2"].tolist() == [1, 0, 0, 0] and first["prompt"] == "a cat"
    assert (first["index"], store[1]["index"]) == (7, 1)  # the line's index, else its position


def test_mindspeed_mm_file_names_follow_the_video_and_two_alike_are_one_error():
    from mm_data.features import mindspeed_file_names

    assert mindspeed_file_names(["a/clip.v1.mp4", "b/other.mp4"]) == ["clip_v1_mp4.pt", "other_mp4.pt"]
    with pytest.raises(DataError, match=r"videos a/x.mp4 and b/x.mp4 would both be stored as features/x_mp4.pt"):
        mindspeed_file_names(["a/x.mp4", "b/x.mp4"])
