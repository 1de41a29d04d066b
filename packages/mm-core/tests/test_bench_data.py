"""bench/wan2_1_data.py: real mp4s through the wan2_1 plugin's loader, timed against a simulated GPU step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_bench_scripts import BENCH, _bench_module

pytest.importorskip("mm_models_video")


def test_the_tiny_data_bench_appends_a_consistent_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(BENCH / "wan2_1_data.py"), "--tiny", "--num-workers", "1", "--clips", "2",
               "--warmup", "1", "--batches", "3", "--steps", "3", "--step-s", "0.05", "--results", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "simulated 3 steps of 0.05 s: wait median" in done.stdout
    [line] = [json.loads(text) for text in (tmp_path / "wan2_1_data.jsonl").read_text().splitlines()]
    assert line["workload"] == "wan2_1_data" and line["device"].startswith("cpu (")
    assert line["command"].startswith(f"python {BENCH.as_posix()}/wan2_1_data.py --tiny")
    assert line["torch"] and line["av"]
    shape, loader, simulated, projected = line["shape"], line["loader"], line["simulated"], line["projected"]
    # The example's global batch 8 over its 8 ranks: one micro-batch of one clip per step, shaped as configured.
    assert shape["micro_batch_size"] == 1 and shape["micro_batches_per_step"] == 1
    assert loader["batch_video_shape"] == [1, 3, 9, 32, 32] and loader["batch_video_dtype"] == "torch.uint8"
    assert line["options"]["num_workers"] == 1 and line["options"]["configured_workers"] == 8
    assert line["options"]["pin_memory"] is False  # configured true, but never on the CPU
    for sample in line["sample"].values():
        assert sample["total_s"] == pytest.approx(sample["decode_s"] + sample["transform_s"] + sample["collate_s"])
    assert loader["s_per_batch"] > 0 and loader["worker_wall_s_per_batch"] == pytest.approx(loader["s_per_batch"])
    assert loader["worker_cpu_s_per_batch"] > 0 and 0 <= loader["ready_wait_s"] <= loader["first_batch_s"]
    assert simulated["steps"] == 3 and 0 <= simulated["wait_min_s"] <= simulated["wait_median_s"]
    assert simulated["wait_fraction_median"] == pytest.approx(simulated["wait_median_s"] / 0.05)
    assert 0 <= simulated["wait_fraction_median"] <= 1 and 0 <= simulated["wait_fraction_mean"] <= 1
    assert projected["workers_needed"] is None or projected["workers_needed"] >= 1
    assert 0 <= projected["configured_wait_fraction"] <= projected["this_machine_wait_fraction"]


def test_workers_needed_follow_the_time_per_clip_and_the_step():
    """3 s a clip per worker against 1.56 s steps: 2 workers keep up, 1 leaves the step waiting 1.44 s."""
    data = _bench_module("wan2_1_data")
    assert data.wait_fraction(3.0, 1, 1, 0.0, 1.56) == pytest.approx(1.44 / 1.56)
    assert data.wait_fraction(3.0, 2, 1, 0.0, 1.56) == 0.0
    assert data.workers_needed(3.0, 1, 0.0, 1.56) == 2
    assert data.workers_needed(3.0, 8, 0.0, 1.56) == 16  # eight clips a step
    assert data.workers_needed(3.0, 1, 0.01, 1.56) == 2
    assert data.workers_needed(3.0, 1, 0.04, 1.56) is None  # taking a ready batch alone costs over 2%
