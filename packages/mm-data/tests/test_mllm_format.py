"""mllm_format records, their attr-driven keys and media paths, and the LLaVA-Instruct conversion."""

from __future__ import annotations

import json

import pytest

from mm_core.errors import DataError
from mm_data.bad_samples import BadSamples
from mm_data.mllm_format import llava_to_mllm, read_mllm_dataset


def _write(path, records):
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_reads_records_with_media_relative_to_dataset_dir(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"")
    index = _write(tmp_path / "data.json", [
        {"images": ["imgs/a.png"], "messages": [{"role": "user", "content": "<image>\nWhat is it?"},
                                                {"role": "assistant", "content": "A cat."}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    ])
    records = read_mllm_dataset(str(index), tmp_path)
    assert records[0].images == [(tmp_path / "imgs" / "a.png").absolute()]
    assert records[0].chat()[0]["content"] == [{"type": "image"}, {"type": "text", "text": "\nWhat is it?"}]
    assert records[1].images == [] and records[1].messages[1]["content"] == "Hello"


def test_comma_separated_files_jsonl_and_max_samples(tmp_path):
    turn = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    first = _write(tmp_path / "a.json", [turn, turn])
    second = tmp_path / "b.jsonl"
    second.write_text("\n".join(json.dumps(turn) for _ in range(3)), encoding="utf-8")
    assert len(read_mllm_dataset(f"{first},{second}", tmp_path)) == 5
    assert len(read_mllm_dataset(f"{first},{second}", tmp_path, max_samples=4)) == 4


def test_attr_renames_keys_roles_and_system(tmp_path):
    index = _write(tmp_path / "d.json", [{"conv": [{"from": "sys", "value": "Be brief."},
                                                   {"from": "human", "value": "<video>Q"},
                                                   {"from": "gpt", "value": "A"}], "clips": ["v.mp4"]}])
    attr = {"messages": "conv", "role_tag": "from", "content_tag": "value", "user_tag": "human",
            "assistant_tag": "gpt", "system_tag": "sys", "videos": "clips"}
    record = read_mllm_dataset(str(index), tmp_path, attr)[0]
    assert record.system == "Be brief." and record.videos == [(tmp_path / "v.mp4").absolute()]
    assert record.chat()[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}


@pytest.mark.parametrize(("entry", "message"), [
    ({"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}]},
     "1 <image> placeholder"),
    ({"messages": [{"role": "user", "content": "Q"}]}, "alternate user, assistant"),
    ({"messages": [{"role": "bot", "content": "Q"}]}, "turn 0"),
    ({"messages": []}, "non-empty list"),
])
def test_malformed_records_are_one_line_errors(tmp_path, entry, message):
    index = _write(tmp_path / "bad.json", [entry])
    with pytest.raises(DataError, match=message):
        read_mllm_dataset(str(index), tmp_path)


def test_malformed_records_are_skipped_and_counted_under_skip(tmp_path):
    good = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    index = tmp_path / "d.jsonl"
    lines = [json.dumps(good), json.dumps({"messages": []}), "{not json", json.dumps(good)]
    index.write_text("\n".join(lines), encoding="utf-8")
    bad = BadSamples("skip")
    assert len(read_mllm_dataset(str(index), tmp_path, bad=bad)) == 2
    assert bad.count == 2
    assert "d.jsonl:2" in bad.reasons[0] and "d.jsonl:3: not valid JSON" in bad.reasons[1]
    with pytest.raises(DataError, match="d.jsonl:2"):
        read_mllm_dataset(str(index), tmp_path, bad=BadSamples("error"))


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_mllm_dataset(str(tmp_path / "nope.json"), tmp_path)


def test_llava_conversion_like_the_seed_script(tmp_path):
    (tmp_path / "000001.jpg").write_bytes(b"")
    items = [
        {"id": "1", "image": "000001.jpg",
         "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A bus."}]},
        {"id": "2", "image": "missing.jpg", "conversations": []},
        {"id": "3", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    records, skipped = llava_to_mllm(items, str(tmp_path))
    assert skipped == 1
    assert records[0] == {"images": [str(tmp_path / "000001.jpg")],
                          "messages": [{"role": "user", "content": "<image>\nWhat is this?"},
                                       {"role": "assistant", "content": "A bus."}]}
    assert records[1]["images"] == []
    with pytest.raises(DataError, match="unknown role 'robot'"):
        llava_to_mllm([{"conversations": [{"from": "robot", "value": "x"}]}], str(tmp_path))
