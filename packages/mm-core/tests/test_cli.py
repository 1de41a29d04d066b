"""The mm command as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mm_core import plugins
from mm_core.cli import main, split_free_flags
from mm_core.testing import toy

TOY = "mm_core.testing.toy"
HEAVY = ("torch", TOY, "mm_models_video", "mm_models_vlm", "mm_parallel", "mm_data")


@pytest.fixture
def toy_installed(tmp_path, monkeypatch) -> Path:
    """A distribution ``mm-toy`` 0.3 declaring plugin ``toy`` (module mm_core.testing.toy), found on sys.path."""
    dist = tmp_path / "site" / "mm_toy-0.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mm-toy\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text(f"[mm.plugins]\ntoy = {TOY}\n")
    monkeypatch.syspath_prepend(str(dist.parent))
    return dist.parent


def _rows(out: str) -> dict[str, list[str]]:
    """A printed table as first column -> the other columns."""
    return {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in out.splitlines())}


def _mm(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mm_core.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_mm_run_trains_and_says_where_the_checkpoint_went(tmp_path):
    done = _mm("run", "--plugin", TOY, "training.train_iters=4", "training.save_interval=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "step 4/4 | loss" in done.stdout
    assert f"checkpoint: {'runs/toy/checkpoints/step_00000004'}" in done.stdout
    assert (tmp_path / "runs/toy/checkpoints/step_00000004/.metadata").is_file()
    resumed = _mm("run", "--plugin", TOY, "training.train_iters=6", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "step 5/6" in resumed.stdout and "step 1/6" not in resumed.stdout


def test_config_errors_are_one_line_with_exit_status_2(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("training:\n  lr_decay: cosine\n")
    done = _mm("run", "--plugin", TOY, "--config", str(cfg), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "unknown key 'training.lr_decay'; did you mean 'training.lr_decay_style'?" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_plugin_lists_what_is_installed(tmp_path):
    done = _mm("run", "--plugin", "wan2_2", cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown plugin 'wan2_2'" in done.stderr and "installed:" in done.stderr


def test_mm_config_prints_the_effective_config(capsys, tmp_path):
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"dim": 12}))
    assert main(["config", "--plugin", TOY, "--model", str(model), "training.lr=3e-4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["dim"] == 12
    assert printed["training"]["lr"] == 3e-4
    assert printed["training"]["output_dir"] == "runs/toy"
    assert set(printed) >= {"model", "data", "parallel", "training", "logging"}


def test_overrides_may_follow_a_flag(capsys, tmp_path):
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"dim": 12}))
    assert main(["config", "--plugin", TOY, "training.lr=3e-4", "--model", str(model), "training.seed=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["model"]["dim"], printed["training"]["lr"], printed["training"]["seed"]) == (12, 3e-4, 7)
    with pytest.raises(SystemExit):
        main(["config", "--plugin", TOY, "training.lr=3e-4", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["plugins"]])
def test_help_and_plugins_import_neither_torch_nor_any_plugin(argv, toy_installed, tmp_path):
    script = ("import sys\nfrom mm_core.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
              f"print('imported:', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(toy_installed), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "imported: []"
    if argv == ["plugins"]:
        assert done.stdout.splitlines()[0].split() == ["name", "package", "version", "description"]
        assert _rows(done.stdout)["toy"] == ["mm-toy", "0.3", toy.__doc__.splitlines()[0]]


def test_mm_plugins_hooks_imports_each_plugin_and_lists_its_hooks(toy_installed, monkeypatch, capsys):
    installed = plugins.installed_plugins
    monkeypatch.setattr(plugins, "installed_plugins", lambda: [p for p in installed() if p.package == "mm-toy"])
    assert main(["plugins", "--hooks"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "name  package  version  hooks",
        "toy   mm-toy   0.3      datasets_provider, default_config, forward_step, loss_func, model_provider, "
        "parallel_plan",
    ]


def test_mm_plugins_with_a_stack_shows_who_implements_each_hook_in_call_order(tmp_path, monkeypatch, capsys):
    (tmp_path / "l1_loss.py").write_text(textwrap.dedent("""
        import torch
        from mm_core import hookimpl

        @hookimpl
        def default_config(task):
            return {}

        @hookimpl
        def loss_func(output, batch, runtime):
            return torch.nn.functional.l1_loss(output, batch["y"]), {}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["plugins", "--plugin", TOY, "--plugin", "l1_loss"]) == 0
    out = capsys.readouterr().out
    stack, table = out.split("\n", 1)
    assert stack == f"plugin stack {TOY}, l1_loss: later plugins are tried first, mm-core's defaults last"
    rows = {hook: (calls, names.split(", ")) for hook, (calls, names) in _rows(table).items()}
    assert rows["loss_func"] == ("first result", ["l1_loss", TOY])
    assert rows["forward_step"] == ("first result", [TOY, "mm_core.defaults"])
    assert rows["get_batch"] == ("first result", ["mm_core.defaults"])
    assert rows["inference"] == ("first result", ["-"])
    calls, names = rows["default_config"]
    assert calls == "every one" and names[:2] == ["l1_loss", TOY] and names[-1] == "mm_core.defaults"
    assert list(rows)[:3] == ["hook", "default_config", "model_provider"]  # in the hookspecs' order


def test_mm_plugins_with_an_unknown_plugin_in_the_stack_is_one_error(capsys):
    assert main(["plugins", "--plugin", TOY, "--plugin", "toy_plugn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown plugin 'toy_plugn': it is neither an installed plugin (installed: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", ["run", "config", "infer", "extract", "plugins"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: mm " + command in capsys.readouterr().out


def test_infer_without_the_hook_is_a_clear_error(capsys):
    assert main(["infer", "--plugin", TOY]) == 2
    assert "do not implement 'inference'" in capsys.readouterr().err


def test_free_flags_become_section_overrides():
    rest, free = split_free_flags(
        ["--plugin", "wan2_1", "--prompt", "a red ball", "--num-frames=9", "--checkpoint", "ck", "a.b=1", "--fast"],
        {"--plugin", "--checkpoint"},
    )
    assert rest == ["--plugin", "wan2_1", "--checkpoint", "ck", "a.b=1"]
    assert free == ["prompt=a red ball", "num_frames=9", "fast=true"]


def test_under_torchrun_a_config_error_is_printed_once_and_is_torchruns_failure_summary(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mm_core.cli", "run", "--plugin", TOY, "training.micro_batch_size=0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    line = "error: training.micro_batch_size must be at least 1, got 0"
    assert done.returncode != 0
    assert done.stderr.splitlines().count(line) == 1  # printed by rank 0 only
    assert f"traceback : {line}" in done.stderr  # torchrun's summary, from the rank's error file
    assert "error_file: <N/A>" not in done.stderr


def test_mm_run_works_unchanged_under_torchrun(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mm_core.cli", "run", "--plugin", TOY, "training.train_iters=3"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("step 3/3 | loss") == 1  # only rank 0 prints
    assert "on 2 × cpu" in done.stdout
    assert (tmp_path / "runs/toy/checkpoints/step_00000003/rank_00001.pt").is_file()
