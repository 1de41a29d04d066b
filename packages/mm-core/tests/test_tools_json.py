"""MindSpeed-MM's ``--mm-tool`` tools.json: its feature store path is extract.output_dir, its profilers are named."""

from __future__ import annotations

import json

import pytest

from mm_core.cli import main
from mm_core.errors import ConfigError
from mm_core.launch_flags import translate

TOY = "mm_core.testing.toy"

# MindSpeed-MM's mindspeed_mm/tools/tools.json, with sorafeature's documented switches (UserGuide/config/工具配置.rst).
TOOLS = {
    "profile": {
        "enable": False, "profile_type": "static", "ranks": [0, 1, 2, 3],
        "static_param": {"level": "level1", "with_stack": False, "with_memory": False, "record_shapes": False,
                         "with_cpu": True, "save_path": "./npu_profiling", "start_step": 10, "end_step": 11,
                         "data_simplification": False, "aic_metrics_type": "PipeUtilization", "analyse_flag": True},
        "dynamic_param": {"config_path": "path to dynamic config folder"},
    },
    "memory_profile": {"enable": False, "start_step": 0, "end_step": 2, "save_path": "./memory_snapshot",
                       "dump_ranks": [0], "stacks": "all", "max_entries": None, "mem_info": False},
    "sorafeature": {"save_path": "./sora_features", "extract_video_feature": False, "extract_text_feature": False},
}


EXTRACT = {"extract": {"output_dir": None}}  # a video plugin's extract section


def _read(*args: str) -> tuple[list[str], list[str]]:
    """The overrides for a config with an extract section and the warning lines of ``args``."""
    flags = translate(args)
    return flags.overrides(EXTRACT), flags.ignored


def test_sorafeature_save_path_is_where_mm_extract_writes(tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS, indent=4))
    overrides, warned = _read("--mm-tool", str(tools))
    assert overrides == ["extract.output_dir=./sora_features"]
    # The disabled profilers are off in mm too; the switches MindSpeed-MM never reads are named.
    assert warned == [f"--mm-tool {tools}: sorafeature.{key}: accepted and ignored (MindSpeed-MM reads it nowhere)"
                      for key in ("extract_video_feature", "extract_text_feature")]
    assert _read(f"--mm-tool={tools}")[0] == overrides


def test_enabled_profilers_and_a_missing_file_are_named(tmp_path, capsys):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps({**TOOLS, "profile": {**TOOLS["profile"], "enable": True},
                                 "memory_profile": {**TOOLS["memory_profile"], "enable": True},
                                 "sorafeature": {"save_path": "feats"}, "pmcc": {}}))
    overrides, warned = _read("--mm-tool", str(tools))
    assert overrides == ["extract.output_dir=feats"]
    assert warned == [
        f"--mm-tool {tools}: profile.enable: accepted and ignored (MindSpeed-MM's Ascend profiler; mm logs each "
        "step's time and memory)",
        f"--mm-tool {tools}: memory_profile.enable: accepted and ignored (MindSpeed-MM's memory snapshot; mm logs "
        "each step's memory)",
        f"--mm-tool {tools}: pmcc: accepted and ignored (not one of MindSpeed-MM's tools)",
    ]
    # Launch scripts name MindSpeed-MM's own copy: absent, it sets nothing and says so, as mm config prints.
    assert main(["config", "--plugin", TOY, "--mm-tool", "./mindspeed_mm/tools/tools.json"]) == 0
    assert ("warning: --mm-tool ./mindspeed_mm/tools/tools.json: no such file; accepted and ignored (MindSpeed-MM's "
            "tools.json, whose sorafeature.save_path would be extract.output_dir)") in capsys.readouterr().err


def test_a_malformed_tools_json_is_one_error_naming_it(tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text('{"sorafeature": {"save_path": 3}}')
    with pytest.raises(ConfigError, match=rf"^--mm-tool {tools}: sorafeature.save_path must be a folder path, got 3$"):
        translate(["--mm-tool", str(tools)])
    tools.write_text("[]")
    with pytest.raises(ConfigError, match=rf"^--mm-tool {tools}: expected a JSON object of tools"):
        translate(["--mm-tool", str(tools)])
