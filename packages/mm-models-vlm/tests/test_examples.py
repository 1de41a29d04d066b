"""examples/qwen2_5_vl load through mm-core's config validation as the README's command passes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mm_core.errors import ConfigError
from mm_core.plugins import load_plugins, make_config

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "qwen2_5_vl"
SECTIONS = {"model": EXAMPLES / "model.json", "data": EXAMPLES / "data_3b.json",
            "parallel.fsdp2": EXAMPLES / "fsdp2_config.yaml"}


def test_3b_finetune_configs_validate():
    config = make_config(load_plugins(["qwen2_5_vl"]), "run", [EXAMPLES / "finetune_qwen2_5_vl_3b.yaml"], SECTIONS)
    assert config.model.from_pretrained.endswith("Qwen2.5-VL-3B-Instruct")
    assert config.model.image_encoder.vision_encoder.freeze is True
    basic = config.data.dataset_param.basic_parameters
    assert basic.dataset == "./data/mllm_format_llava_instruct_data.json" and basic.cutoff_len == 1024
    assert config.parallel.fsdp2.sub_modules_to_wrap == ["model.visual.blocks.{*}", "model.language_model.layers.{*}"]
    assert (config.training.global_batch_size, config.training.lr, config.training.bf16) == (256, 1.0e-5, True)


def test_seed_data_json_without_mm_keys_loads(tmp_path):
    data = json.loads((EXAMPLES / "data_3b.json").read_text())
    for key in ("cutoff_len", "packing"):
        del data["dataset_param"]["basic_parameters"][key]
    seed = tmp_path / "data_3b.json"
    seed.write_text(json.dumps(data))
    config = make_config(load_plugins(["qwen2_5_vl"]), "run", [], {"data": seed})
    assert config.data.dataset_param.attr.images == "images"


def test_a_misspelled_data_key_is_one_error(tmp_path):
    data = json.loads((EXAMPLES / "data_3b.json").read_text())
    data["dataset_param"]["basic_parameters"]["cuttoff_len"] = 10
    bad = tmp_path / "data.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="did you mean 'data.dataset_param.basic_parameters.cutoff_len'"):
        make_config(load_plugins(["qwen2_5_vl"]), "run", [], {"data": bad})
