"""Config loading: files, section files, overrides, and one-line validation errors."""

from __future__ import annotations

import copy
import json

import pytest

from mm_core.config import build_config, dump, load_file, parse_override
from mm_core.errors import ConfigError

DEFAULTS = {
    "model": {"hidden": 32, "extra": {}},
    "training": {"lr": 1e-4, "train_iters": 100, "bf16": True, "output_dir": None, "lr_decay_style": "cosine"},
    "parallel": {"fsdp2": {"enable": False, "sharding_size": None, "param_dtype": None}},
}


def test_yaml_file_and_overrides_merge_in_order(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("training:\n  lr: 3.0e-4\n  train_iters: 5\n")
    cfg = build_config(DEFAULTS, [f], overrides=["training.train_iters=7", "model.extra.anything=[1, 2]"])
    assert cfg.training.lr == 3e-4
    assert cfg.training.train_iters == 7
    assert cfg.model.extra.anything == [1, 2]
    assert cfg.model.hidden == 32


def test_json_section_file_lands_under_its_section(tmp_path):
    f = tmp_path / "model.json"
    f.write_text(json.dumps({"hidden": 64}))
    cfg = build_config(DEFAULTS, section_files={"model": f})
    assert cfg.model.hidden == 64


def test_unknown_key_names_file_key_and_closest_match(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("training:\n  train_iter: 5\n")
    with pytest.raises(ConfigError) as info:
        build_config(DEFAULTS, [f])
    message = str(info.value)
    assert str(f) in message
    assert "unknown key 'training.train_iter'" in message
    assert "did you mean 'training.train_iters'" in message
    assert "\n" not in message


def test_wrong_type_says_what_was_expected():
    with pytest.raises(ConfigError, match=r"training.bf16 must be a boolean .*got a string 'yes please'"):
        build_config(DEFAULTS, overrides=["training.bf16=yes please"])


def test_int_is_accepted_where_a_float_is_expected():
    assert build_config(DEFAULTS, overrides=["training.lr=1"]).training.lr == 1


def test_choice_outside_the_allowed_set_is_rejected():
    with pytest.raises(ConfigError, match="lr_decay_style must be one of cosine, linear, constant"):
        build_config(DEFAULTS, overrides=["training.lr_decay_style=step"])


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid yaml"):
        load_file(bad)
    top_list = tmp_path / "list.json"
    top_list.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_file(top_list)
    with pytest.raises(ConfigError, match=f"config file {tmp_path} is not a regular file"):
        load_file(tmp_path)


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("training.lr")


def test_setting_keys_of_an_enable_section_switches_it_on(tmp_path):
    f = tmp_path / "fsdp2.yaml"
    f.write_text("sharding_size: auto\nparam_dtype: bf16\n")
    cfg = build_config(DEFAULTS, section_files={"parallel.fsdp2": f})
    assert cfg.parallel.fsdp2.enable is True
    assert cfg.parallel.fsdp2.sharding_size == "auto"
    off = build_config(DEFAULTS, section_files={"parallel.fsdp2": f}, overrides=["parallel.fsdp2.enable=false"])
    assert off.parallel.fsdp2.enable is False
    assert build_config(DEFAULTS).parallel.fsdp2.enable is False


def test_dump_round_trips(tmp_path):
    cfg = build_config(DEFAULTS, overrides=["training.lr=0.5"])
    out = tmp_path / "effective.yaml"
    out.write_text(dump(cfg))
    assert build_config(DEFAULTS, [out]) == cfg


def test_attribute_access_error_lists_keys():
    cfg = build_config(DEFAULTS)
    with pytest.raises(AttributeError, match="no key 'lrr'.*lr, train_iters"):
        _ = cfg.training.lrr


def test_the_config_knows_which_file_or_override_set_each_key(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("training:\n  lr: 0.5\n")
    data = tmp_path / "data.json"
    data.write_text('{"dataset_param": {"basic_parameters": {"json_path": "x.json"}}}')
    config = build_config({"training": {"lr": 1.0, "seed": 1}, "data": {}}, [run], {"data": data},
                          ["training.seed=3"])
    assert config.source_of("training.lr") == str(run)
    assert config.source_of("training.seed") == "override 'training.seed=3'"
    assert config.source_of("data.dataset_param.basic_parameters.json_path") == str(data)
    assert config.source_of("data.dataset_param.basic_parameters.json_path.deeper") == str(data)
    assert config.source_of("training.train_iters") is None  # a default
    assert copy.deepcopy(config).source_of("training.lr") == str(run)


def test_an_unused_key_is_accepted_with_a_warning_naming_it_and_dropped(tmp_path, caplog):
    from mm_core.config import Unused

    kernel = Unused("an Ascend fused kernel")
    defaults = {"model": {"hidden": 8, "use_fused_rmsnorm": kernel, "use_fused_swiglu": kernel,
                          "patch": Unused("MindSpeed-MM's monkey patches")}}
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"hidden": 16, "use_fused_rmsnorm": True, "patch": {"bridge_patch": False},
                                 "use_fused_swiglu": True}))
    with caplog.at_level("WARNING", logger="mm"):
        config = build_config(defaults, section_files={"model": model})
    assert config.to_dict() == {"model": {"hidden": 16}}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"warning: {model}: accepted and ignored (an Ascend fused kernel): model.use_fused_rmsnorm, "
        "model.use_fused_swiglu",
        f"warning: {model}: accepted and ignored (MindSpeed-MM's monkey patches): model.patch",
    ]
