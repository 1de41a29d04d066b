from __future__ import annotations

import json
from pathlib import Path

import pytest

from mm_core.errors import ConfigError, DataError
from mm_data.formats import load_data_config, parse_data_config, read_index

ENTRY = {"path": "videos/a.mp4", "cap": "a cat", "num_frames": 81, "fps": 24,
         "resolution": {"height": 480, "width": 832}}


def test_read_data_json(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text(json.dumps([ENTRY, {**ENTRY, "path": "videos/b.mp4", "resolution": [64, 96]}]))
    a, b = read_index(tmp_path / "data.json")
    assert a.path == tmp_path / "videos/a.mp4" and a.caption == "a cat"
    assert a.shape == (81, 480, 832) and a.fps == 24.0
    assert b.shape == (81, 64, 96)


def test_read_jsonl_with_a_data_folder_and_stepvideo_keys(tmp_path: Path) -> None:
    lines = [json.dumps(ENTRY), "", json.dumps({"file": "c.mp4", "captions": "a dog"})]
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    a, c = read_index(tmp_path / "data.jsonl", data_folder="/data")
    assert a.path == Path("/data/videos/a.mp4")
    assert c.path == Path("/data/c.mp4") and c.caption == "a dog" and c.shape == (None, None, None)


def test_read_data_txt_lists_folders_and_indexes(tmp_path: Path) -> None:
    (tmp_path / "one.json").write_text(json.dumps([ENTRY]))
    (tmp_path / "data.txt").write_text(f"/videos1,{tmp_path / 'one.json'}\n\n/videos2, {tmp_path / 'one.json'}\n")
    assert [r.path for r in read_index(tmp_path / "data.txt")] == [Path("/videos1/videos/a.mp4"),
                                                                    Path("/videos2/videos/a.mp4")]


def test_index_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"video index .*missing\.json does not exist"):
        read_index(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(DataError, match=r"bad\.json is not valid JSON"):
        read_index(tmp_path / "bad.json")
    (tmp_path / "nopath.jsonl").write_text(json.dumps({"cap": "x"}))
    with pytest.raises(DataError, match=r"nopath\.jsonl:1: missing the video path"):
        read_index(tmp_path / "nopath.jsonl")


SEED_000 = {
    "dataset_param": {
        "data_folder": "./data/video_demo_dataset/",
        "json_path": "./data/video_demo_dataset/annotation.json",
        "num_frames": 49,
        "max_height": 480,
        "max_width": 832,
        "tokenizer_config": {"pretrained_model_name_or_path": "./tokenizer/", "model_max_length": 512},
    },
    "dataloader_param": {
        "dataloader_mode": "sampler",
        "sampler_type": "SequentialSampler",
        "drop_last": True,
        "pin_memory": True,
        "group_frame": False,
        "group_resolution": False,
    },
}

MINDSPEED_WAN = {
    "dataset_param": {
        "dataset_type": "t2v",
        "basic_parameters": {"data_path": "./data.txt", "data_storage_mode": "combine"},
        "preprocess_parameters": {"video_reader_type": "DecordVideo", "num_frames": 81, "max_height": 480,
                                  "max_width": 832, "train_fps": 24, "hw_stride": 8, "train_pipeline": {}},
        "use_text_processer": True,
        "tokenizer_config": [{"from_pretrained": "tokenizer", "model_max_length": 512}],
    },
    "dataloader_param": {"dataloader_mode": "sampler", "sampler_type": "LengthGroupedSampler", "shuffle": True,
                         "group_data": True, "initial_global_step_for_sampler": 0, "prefetch_factor": 4,
                         "persistent_workers": True},
}


def test_parse_the_seeds_data_json(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(SEED_000))
    config = load_data_config(path)
    assert config.dataset_param.data_path == "./data/video_demo_dataset/annotation.json"
    assert config.dataset_param.num_frames == 49
    assert config.dataset_param.tokenizer_config["model_max_length"] == 512
    assert config.dataloader_param.pin_memory is True and config.dataloader_param.batch_size == 1
    assert config.on_bad_sample == "skip"


def test_parse_mindspeed_nested_blocks() -> None:
    config = parse_data_config(MINDSPEED_WAN)
    assert config.dataset_param.data_path == "./data.txt"
    assert config.dataset_param.train_fps == 24.0
    assert config.dataset_param.extra["hw_stride"] == 8
    assert config.dataloader_param.extra["group_data"] is True
    assert config.dataloader_param.prefetch_factor == 4 and config.dataloader_param.persistent_workers is True


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"dataset_param": {"num_frame": 49}}, r"data.json: dataset_param: unknown key 'num_frame'; did you mean "
                                               r"'num_frames'\?$"),
        ({"dataloader_param": {"batchsize": 2}}, r"unknown key 'batchsize'; did you mean 'batch_size'\?$"),
        ({"dataset_params": {}}, r"data.json: unknown key 'dataset_params'; did you mean 'dataset_param'\?$"),
        ({"dataset_param": {"max_height": "480"}}, r"dataset_param.max_height must be int, got '480'$"),
        ({"dataloader_param": {"shuffle": 1}}, r"dataloader_param.shuffle must be bool, got 1$"),
        ({"on_bad_sample": "ignore"}, r"on_bad_sample must be 'skip' or 'error', got 'ignore'$"),
    ],
)
def test_config_errors_are_one_line(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_data_config(raw)
