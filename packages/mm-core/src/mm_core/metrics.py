"""Per-step log lines, a progress bar, metrics.jsonl and TensorBoard scalars (rank 0 only)."""

from __future__ import annotations

import json
import logging
import resource
import sys
from pathlib import Path

import torch

log = logging.getLogger("mm")


# Dense bf16 tensor-core peak per device, by a substring of its name (most specific first).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H20", 148.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)


def peak_tflops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in TFLOP/s when known (for MFU), else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this process so far: allocator peak on accelerators, max RSS on the CPU."""
    if device.type != "cpu":
        return torch.get_device_module(device.type).max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


LINE_FORMATS = {
    "loss": "loss {:.4f}",
    "lr": "lr {:.3e}",
    "grad_norm": "grad_norm {:.3f}",
    "step_s": "{:.3f} s/step",
    "data_s": "data {:.3f} s",
    "samples_per_s": "{:.2f} samples/s",
    "tokens_per_s": "{:,.0f} tokens/s",
    "tflops": "{:.1f} TFLOP/s",
    "mfu": "MFU {:.1%}",
    "peak_mem_gib": "mem {:.2f} GiB",
}


def format_line(step: int, total: int, values: dict) -> str:
    """One human-readable log line for a training step; unknown metrics follow the known ones."""
    keys = [*(k for k in LINE_FORMATS if k in values), *(k for k in values if k not in LINE_FORMATS)]
    return " | ".join([f"step {step}/{total}", *(LINE_FORMATS.get(k, k + " {:.4g}").format(values[k]) for k in keys)])


class MetricsLogger:
    """Writes metrics where the config asks: log lines, progress bar, jsonl, TensorBoard."""

    def __init__(self, output_dir: Path, total_steps: int, start_step: int, logging_cfg, enabled: bool) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.bar = None
        self.tb = None
        self.jsonl = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(output_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if logging_cfg.get("tensorboard"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:
                log.info("tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)")
        if logging_cfg.get("progress_bar") and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def print(self, message: str) -> None:
        """Print a line above the progress bar (rank 0 only)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def log(self, step: int, values: dict, prefix: str = "train") -> None:
        """Record ``values`` for ``step`` everywhere and print them as one line."""
        if not self.enabled:
            return
        if prefix == "train":
            self.print(format_line(step, self.total, values))
            record = {"step": step, **values}
        else:
            self.print(f"{prefix} | " + format_line(step, self.total, values))
            record = {"step": step, **{f"{prefix}_{k}": v for k, v in values.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def advance(self, step: int, loss: float | None = None) -> None:
        """Move the progress bar to ``step``."""
        if self.bar is not None:
            self.bar.n = step
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        """Flush and close every sink."""
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
