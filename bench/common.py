"""What every bench script shares: arguments, timing, peak memory, TFLOP/s and MFU, the JSON result line."""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mm_core.metrics import peak_memory_gib, peak_tflops
from mm_core.testing import run_training

RESULTS = Path(__file__).parent / "results"

def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every bench script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", action="store_true", help="a tiny model and shape: checks the script on the CPU")
    p.add_argument("--device", default=None, help="cuda (default when available), cpu, npu...")
    p.add_argument("--impl", choices=("both", "plain", "mm"), default="both", help="which loops to time")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, cuDNN autotuning)")
    p.add_argument("--steps", type=int, default=10, help="timed steps; the median is reported")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the device for MFU (default: mm_core.metrics.PEAK_BF16_TFLOPS by name)")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of <workload>.jsonl (default bench/results)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="parallel.compile of the mm loop's blocks (auto: on an accelerator, off on the CPU)")
    return p


def compile_options(setting: str, device: torch.device) -> list[str]:
    """The mm loop's ``parallel.compile`` overrides for ``--compile`` on ``device``."""
    on = setting == "on" or (setting == "auto" and device.type != "cpu")
    return [f"parallel.compile.enable={'true' if on else 'false'}"]


def device_of(name: str | None) -> torch.device:
    """The requested device, else the accelerator when there is one, else the CPU."""
    if name:
        return torch.device(name)
    accelerator = torch.accelerator.current_accelerator()
    return torch.device(accelerator.type, 0) if accelerator is not None else torch.device("cpu")


def device_name(device: torch.device) -> str:
    """The device's marketing name (``NVIDIA H100 80GB HBM3``), or ``cpu``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing on the CPU)."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def release(device: torch.device) -> None:
    """Free what the previous configuration left and restart the peak-memory count."""
    gc.collect()
    if device.type != "cpu":
        module = torch.get_device_module(device.type)
        module.empty_cache()
        module.reset_peak_memory_stats(device)


def time_steps(step: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step`` after ``warmup`` untimed ones, the device synchronized."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def trainer_step_times(
    plugins: list, overrides: list[str], device: torch.device, warmup: int, steps: int
) -> list[float]:
    """Train ``warmup + steps`` steps with mm's Trainer and ``plugins``; the seconds of the timed steps.

    The Trainer's own ``step_s`` (metrics.jsonl) is the wall time of a whole step, data, forward, backward,
    clipping and optimizer included; it ends reading the loss, which waits for the device.
    """
    with tempfile.TemporaryDirectory() as out:
        run_training(plugins, out, [
            f"training.device={device}", f"training.train_iters={warmup + steps}", "training.micro_batch_size=1",
            "training.global_batch_size=1", "training.save_interval=0", "training.lr=1e-5",
            "logging.tensorboard=false", "logging.progress_bar=false", *overrides,
        ])
        records = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    return [r["step_s"] for r in records if r["step"] > warmup]


@dataclass
class Measurement:
    """One configuration timed: its median step, tokens and model FLOPs per step, and peak memory."""

    impl: str
    step_s: float
    tokens: int
    model_flops: float
    peak_mem_gib: float
    options: dict


def measure(impl: str, step_times: list[float], tokens: int, model_flops: float, device: torch.device,
            options: dict) -> Measurement:
    """A Measurement from per-step seconds (median) and the peak memory since the last :func:`release`."""
    return Measurement(impl, statistics.median(step_times), tokens, model_flops, peak_memory_gib(device), options)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def result_line(workload: str, m: Measurement, device: torch.device, peak: float | None, shape: dict,
                args: argparse.Namespace) -> dict:
    """The JSON object of one measured configuration (the keys docs/performance.md lists)."""
    tflops = m.model_flops / m.step_s / 1e12
    return {
        "workload": workload,
        "impl": m.impl,
        "device": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "shape": shape,
        "options": m.options,
        "warmup": args.warmup,
        "steps": args.steps,
        "step_s": m.step_s,
        "tokens_per_s": m.tokens / m.step_s,
        "model_flops": m.model_flops,
        "tflops": tflops,
        "mfu": tflops / peak if peak else None,
        "peak_mem_gib": m.peak_mem_gib,
    }


def report(workload: str, measurements: list[Measurement], device: torch.device, shape: dict,
           args: argparse.Namespace) -> list[dict]:
    """Print one line per configuration and append them to ``<results>/<workload>.jsonl``; returns the lines."""
    peak = args.peak_tflops or peak_tflops(device)
    lines = [result_line(workload, m, device, peak, shape, args) for m in measurements]
    plain = next((line for line in lines if line["impl"] == "plain"), None)
    for line in lines:
        if line["impl"] == "mm" and plain is not None:
            line["speedup_vs_plain"] = plain["step_s"] / line["step_s"]
    print(f"{workload} on {lines[0]['device']} | shape {shape} | peak {peak or 'unknown'} TFLOP/s")
    for line in lines:
        mfu = f"MFU {line['mfu']:.1%}" if line["mfu"] is not None else "MFU n/a (--peak-tflops)"
        speedup = f" | {line['speedup_vs_plain']:.2f}× plain" if "speedup_vs_plain" in line else ""
        print(f"  {line['impl']:>5}: {line['step_s']:.3f} s/step | {line['tokens_per_s']:,.0f} tokens/s | "
              f"{line['tflops']:.1f} TFLOP/s | {mfu} | peak {line['peak_mem_gib']:.2f} GiB{speedup}")
    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / f"{workload}.jsonl", "a", encoding="utf-8") as out:
        for line in lines:
            out.write(json.dumps(line) + "\n")
    return lines
