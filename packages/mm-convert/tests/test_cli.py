"""The mm-convert command: converters from the plugins' register_converters hook, help, errors, the seeds' syntax."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mm_convert import Converter, ConvertError, Registry, collect_converters
from mm_convert.cli import main
from mm_convert.options import build_options, parse_flags
from mm_convert.registry import declared_converters


def test_register_converters_hook_gives_both_families():
    registry = collect_converters()
    assert {"Wan21Converter", "Qwen2_5_VLConverter"} <= set(registry)
    assert list(registry["Qwen2_5_VLConverter"].subcommands()) == [
        "hf_to_mm", "hf_to_mm_ldt", "hf_to_mm_dcp", "mm_to_hf", "resplit", "lora_hf_to_mm", "lora_mm_to_hf",
        "dcp_to_hf", "export"]


def test_a_converter_registered_twice_under_one_name_is_an_error():
    registry = Registry()

    class One(Converter):
        name = "Same"

    class Two(Converter):
        name = "Same"

    registry.add(One)
    registry.add(One)
    with pytest.raises(ConvertError, match="converter 'Same' is registered twice"):
        registry.add(Two)


def test_the_declared_converters_are_the_ones_the_hook_registers():
    registry = collect_converters()
    assert declared_converters() == {name: converter.description for name, converter in registry.items()}


def test_help_lists_converters_from_metadata_without_importing_torch_or_plugins():
    heavy = ("torch", "mm_models_video", "mm_models_vlm")
    script = ("import sys\nfrom mm_convert.cli import main\nmain(['--help'])\n"
              f"print('imported:', sorted(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "imported: []"
    assert ("  Wan21Converter: Wan2.1 T2V/I2V transformer: diffusers, MindSpeed-MM and Wan-AI layouts; "
            "mm checkpoint export") in lines
    assert any(line.startswith("  Qwen2_5_VLConverter: Qwen2.5-VL: ") for line in lines)


def test_a_converter_lists_its_subcommands_and_a_subcommand_its_options(capsys):
    assert main(["Wan21Converter"]) == 0
    out = capsys.readouterr().out
    for text in ("hf_to_mm", "mm_to_hf", "resplit", "export", "original_to_hf", "convert_to_mm    same as hf_to_mm"):
        assert text in out
    assert main(["Qwen2_5_VLConverter", "hf_to_mm", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--cfg.parallel_config.llm_pp_layers (list or int, required)" in out
    assert "--cfg.parallel_config.tp_size (int, default: 1)" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["Qwen25VLConverter"], "unknown converter 'Qwen25VLConverter' (did you mean Qwen2_5_VLConverter?"),
    (["Wan21Converter", "hf_to_m"], "unknown Wan21Converter subcommand 'hf_to_m' (did you mean hf_to_mm?"),
    (["Wan21Converter", "hf_to_mm", "--cfg.source_path", "x"], "Wan21Converter hf_to_mm needs --cfg.target_path"),
    (["Wan21Converter", "hf_to_mm", "--cfg.source_pth", "x"], "unknown option --cfg.source_pth for Wan21Converter "
                                                              "hf_to_mm (did you mean --cfg.source_path?)"),
    (["Wan21Converter", "resplit", "--cfg.source_path", "a", "--cfg.target_path", "b", "--cfg.pp_vpp_layers",
      "many"], "--cfg.pp_vpp_layers expects list or int, got 'many'"),
    (["Wan21Converter", "hf_to_mm", "--cfg.source_path"], "option --cfg.source_path needs a value"),
    (["Qwen2_5_VLConverter", "hf_to_mm", "--cfg.mm_dir", "m", "--cfg.hf_config.hf_dir", "/nonexistent",
      "--cfg.parallel_config.llm_pp_layers", "[[36]]", "--cfg.parallel_config.vit_pp_layers", "[[32]]"],
     "--cfg.hf_config.hf_dir /nonexistent is not a Hugging Face folder (no config.json)"),
])
def test_errors_are_one_line_with_status_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_seeds_flags_plain_flags_and_mode_parse_alike():
    options = collect_converters()["Qwen2_5_VLConverter"].subcommands()["mm_to_hf"].options
    seeds = ["--cfg.save_hf_dir", "out", "--cfg.mm_dir", "mm", "--cfg.hf_config.hf_dir", "hf",
             "--cfg.parallel_config.llm_pp_layers", "[36]", "--cfg.parallel_config.vit_pp_layers", "[32]",
             "--cfg.parallel_config.tp_size", "1"]
    plain = ["--save-hf-dir=out", "--mm_dir", "mm", "--hf_config.hf_dir", "hf", "--parallel_config.llm_pp_layers",
             "[36]", "--parallel_config.vit_pp_layers", "[32]"]
    a, b = (build_options(options, parse_flags(flags), "mm_to_hf") for flags in (seeds, plain))
    assert a == b and a.parallel_config.llm_pp_layers == [36] and str(a.hf_config.hf_dir) == "hf"


def test_options_before_the_subcommand_run_it_as_options_after_it(monkeypatch, capsys):
    from dataclasses import dataclass

    from mm_convert import cli, option, subcommand

    @dataclass
    class EchoOptions:
        version: str = option("v1", help="a version")
        out: str = option("x", help="an output")

    class Echo(Converter):
        name = "EchoConverter"
        aliases = {"echo_alias": "echo"}

        @subcommand(EchoOptions)
        def echo(self, opts: EchoOptions) -> str:
            """Say the options."""
            return f"echo {opts.version} {opts.out}"

    monkeypatch.setattr(cli, "collect_converters", lambda: {"EchoConverter": Echo})
    forms = [
        ["EchoConverter", "echo", "--version", "v1.3", "--cfg.out", "o"],
        ["EchoConverter", "--version", "v1.3", "echo", "--cfg.out", "o"],  # the seeds' order
        ["EchoConverter", "--version=v1.3", "--cfg.out", "o", "echo_alias"],
        ["EchoConverter", "--version", "v1.3", "--mode", "echo", "--out", "o"],
    ]
    for argv in forms:
        assert main(argv) == 0
        assert capsys.readouterr().out == "echo v1.3 o\n", argv
    assert "Say the options." in cli.run(["EchoConverter", "--version", "v1.3", "echo", "--help"])
    assert cli.run(["EchoConverter", "--version", "v1.3"]).startswith("usage: mm-convert EchoConverter SUBCOMMAND")


def test_the_seeds_opensoraplan_vae_convert_order_converts(tmp_path):
    import torch

    ckpt = tmp_path / "merged.ckpt"
    torch.save({"ema_state_dict": {"w": torch.ones(2)}}, ckpt)
    argv = ["OpenSoraPlanConverter", "--version", "v1.3", "vae_convert", "--cfg.source_path", str(ckpt),
            "--cfg.target_path", str(tmp_path / "vae.pt")]
    assert main(argv) == 0
    assert (tmp_path / "vae.pt").is_file()


def test_mindspeed_mm_s_option_names_config_file_print_config_and_converter_name(monkeypatch, capsys, tmp_path):
    from dataclasses import dataclass

    from mm_convert import cli, option, subcommand

    @dataclass
    class SplitOptions:
        source_path: Path = option(help="in")
        ckpt_path: Path = option(help="original folder")
        pp_vpp_layers: list | None = option(None, help="layers per stage")

    class Split(Converter):
        name = "SplitConverter"
        other_names = ("MindSpeedSplitConverter",)

        @subcommand(SplitOptions)
        def split(self, opts: SplitOptions) -> str:
            """Say the options."""
            return f"split {opts.source_path} {opts.ckpt_path} {opts.pp_vpp_layers}"

    monkeypatch.setattr(cli, "collect_converters", lambda: {"SplitConverter": Split})
    mindspeed = ["MindSpeedSplitConverter", "split", "--cfg.source_path", "a", "--cfg.hf_dir", "h",
                 "--cfg.target_parallel_config.pp_layers", "[[2,2]]"]
    assert cli.run(mindspeed) == "split a h [[2, 2]]"
    config = tmp_path / "convert.yaml"
    config.write_text("cfg:\n  source_path: a\n  hf_dir: h\n  target_parallel_config:\n    pp_layers: [1, 3]\n")
    assert cli.run(["SplitConverter", "split", "--config", str(config), "--cfg.source_path", "b"]) == "split b h [1, 3]"
    printed = cli.run(["SplitConverter", "--print_config", "split", "--config", str(config)])
    assert printed == "cfg:\n  source_path: a\n  ckpt_path: h\n  pp_vpp_layers:\n  - 1\n  - 3"
    both = ["SplitConverter", "split", "--cfg.source_path", "a", "--cfg.hf_dir", "h", "--cfg.ckpt_path", "h"]
    assert main(both) == 2
    assert "--cfg.hf_dir and --cfg.ckpt_path name the same option; give one" in capsys.readouterr().err
    assert main(["SplitConverter", "split", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "--config" in capsys.readouterr().err
