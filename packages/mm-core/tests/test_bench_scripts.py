"""The bench scripts run (tiny models on the CPU) and write the result lines docs/performance.md describes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
KEYS = {"workload", "impl", "device", "date", "command", "torch", "diffusers", "transformers", "shape", "options",
        "warmup", "steps", "step_s", "tokens_per_s", "model_flops", "tflops", "mfu", "peak_mem_gib"}


def _bench_module(name: str):
    """Import ``bench/<name>.py`` (it imports ``common`` from its folder)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize(("script", "package"), [("wan2_1", "mm_models_video"), ("qwen2_5_vl", "mm_models_vlm")])
def test_a_bench_script_runs_tiny_on_the_cpu_and_appends_its_lines(tmp_path, script, package):
    pytest.importorskip(package)
    # One thread: the CPU check stays quick on a busy machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(BENCH / f"{script}.py"), "--tiny", "--device", "cpu", "--warmup", "0",
               "--steps", "2", "--peak-tflops", "1", "--results", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert " plain: " in done.stdout and "× plain" in done.stdout
    lines = [json.loads(line) for line in (tmp_path / f"{script}.jsonl").read_text().splitlines()]
    assert [line["impl"] for line in lines] == ["plain", "mm"]
    plain, mm = lines
    assert plain.keys() == KEYS and mm.keys() == KEYS | {"speedup_vs_plain"}
    for line in lines:
        assert line["workload"] == script and line["device"] == "cpu" and line["steps"] == 2
        assert line["command"].startswith(f"python {BENCH.as_posix()}/{script}.py --tiny")
        assert line["step_s"] > 0 and line["model_flops"] > 0 and line["peak_mem_gib"] > 0
        assert line["mfu"] == pytest.approx(line["tflops"])  # against --peak-tflops 1
        assert line["tokens_per_s"] == pytest.approx(line["shape"]["tokens"] / line["step_s"])
    assert mm["speedup_vs_plain"] == pytest.approx(plain["step_s"] / mm["step_s"])


def test_wan_model_flops_reproduce_the_issue_figure():
    """Wan2.1-1.3B at 81×480×832: 32,760 tokens, 512 text tokens, 8.49e14 FLOPs per sample and step."""
    pytest.importorskip("mm_models_video")
    wan = _bench_module("wan2_1")
    latents = wan.latent_shape("1.3b", 81, 480, 832)
    assert latents == (16, 21, 60, 104)
    tokens = wan.video_tokens("1.3b", latents)
    assert tokens == 32760
    assert wan.model_flops("1.3b", tokens, 512) == pytest.approx(8.49e14, rel=2e-3)


def test_qwen_model_flops_count_each_packed_sample_alone():
    """Two samples of 100 tokens cost less attention than one of 200, the same dense FLOPs."""
    pytest.importorskip("mm_models_vlm")
    qwen = _bench_module("qwen2_5_vl")
    config = qwen.model_config(tiny=True)
    text = config.text_config
    two, one = qwen.model_flops(config, [100, 100]), qwen.model_flops(config, [200])
    assert one - two == 12 * text.num_hidden_layers * text.hidden_size * (200**2 - 2 * 100**2)


@pytest.mark.slow
def test_the_encoder_engines_bench_counts_half_the_encodes_per_rank_on_two_ranks(tmp_path):
    pytest.importorskip("mm_models_video")
    command = [sys.executable, str(BENCH / "encoder_engines.py"), "--tiny", "--device", "cpu", "--steps", "4",
               "--results", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = json.loads((tmp_path / "encoder_engines.jsonl").read_text())
    assert line["every_rank_encodes"] == 4 and line["encoder_dp_encodes"] == [2, 2]
    assert line["encoder_dp_time_ratio"] == pytest.approx(line["encoder_dp_s"] / line["every_rank_encode_s"])
