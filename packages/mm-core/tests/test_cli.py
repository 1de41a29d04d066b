"""The mm command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from mm_core.cli import main, split_free_flags


def _mm(*args: str, env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mm_core.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_mm_run_trains_and_says_where_the_checkpoint_went(tmp_path, toy_env):
    done = _mm("run", "--plugin", "toy_plugin", "training.train_iters=4", "training.save_interval=2",
               env=toy_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "step 4/4 | loss" in done.stdout
    assert f"checkpoint: {'runs/toy_plugin/checkpoints/step_00000004'}" in done.stdout
    assert (tmp_path / "runs/toy_plugin/checkpoints/step_00000004/.metadata").is_file()
    resumed = _mm("run", "--plugin", "toy_plugin", "training.train_iters=6", "--resume", env=toy_env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "step 5/6" in resumed.stdout and "step 1/6" not in resumed.stdout


def test_config_errors_are_one_line_with_exit_status_2(tmp_path, toy_env):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("training:\n  lr_decay: cosine\n")
    done = _mm("run", "--plugin", "toy_plugin", "--config", str(cfg), env=toy_env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "unknown key 'training.lr_decay'; did you mean 'training.lr_decay_style'?" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_plugin_lists_what_is_installed(tmp_path, toy_env):
    done = _mm("run", "--plugin", "wan2_2", env=toy_env, cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown plugin 'wan2_2'" in done.stderr and "installed:" in done.stderr


def test_mm_config_prints_the_effective_config(capsys, tmp_path):
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"hidden": 12}))
    assert main(["config", "--plugin", "toy_plugin", "--model", str(model), "training.lr=3e-4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["hidden"] == 12
    assert printed["training"]["lr"] == 3e-4
    assert printed["training"]["output_dir"] == "runs/toy_plugin"
    assert set(printed) >= {"model", "data", "parallel", "training", "logging"}


def test_mm_plugins_lists_installed_entry_points(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("name") or out.startswith("no plugins installed")


@pytest.mark.parametrize("command", ["run", "config", "infer", "extract", "plugins"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: mm " + command in capsys.readouterr().out


def test_infer_without_the_hook_is_a_clear_error(capsys):
    assert main(["infer", "--plugin", "toy_plugin", "training.device=cpu"]) == 2
    assert "do not implement 'inference'" in capsys.readouterr().err


def test_free_flags_become_section_overrides():
    rest, free = split_free_flags(
        ["--plugin", "wan2_1", "--prompt", "a red ball", "--num-frames=9", "--checkpoint", "ck", "a.b=1", "--fast"],
        {"--plugin", "--checkpoint"},
    )
    assert rest == ["--plugin", "wan2_1", "--checkpoint", "ck", "a.b=1"]
    assert free == ["prompt=a red ball", "num_frames=9", "fast=true"]


def test_mm_run_works_unchanged_under_torchrun(tmp_path, toy_env):
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mm_core.cli", "run", "--plugin", "toy_plugin", "training.device=cpu", "training.train_iters=3",
         "training.save_interval=3", "model.dropout=0.0"],
        capture_output=True, text=True, env=toy_env, cwd=tmp_path, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("step 3/3 | loss") == 1  # only rank 0 prints
    assert "on 2 × cpu" in done.stdout
    assert (tmp_path / "runs/toy_plugin/checkpoints/step_00000003/rank_00001.pt").is_file()
