"""Helpers for testing mm plugins on the CPU: train as ``mm run`` would, in one or several gloo processes.

Imports without pytest (bench/ uses it); the pytest fixtures live in :mod:`mm_core.pytest_plugin`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
import torch.distributed as dist

from mm_core.plugins import load_plugins, make_config
from mm_core.runtime import create_runtime
from mm_core.trainer import Trainer, TrainResult


def launch_script_flags(script: str | Path, **values: str) -> list[str]:
    """The ``GPT_ARGS``, ``MM_ARGS``, ``OUTPUT_ARGS`` and ``SORA_ARGS`` (the inference scripts' Megatron flags) of a
    MindSpeed-MM launch script as one argument list, its shell variables (``TP=1``, ``MM_MODEL="..."``; ``values``
    override them) filled in."""
    text = Path(script).read_text(encoding="utf-8")
    known = dict(re.findall(r"^(\w+)=\"?([^\"\n#]*?)\"?\s*(?:#.*)?$", text, re.M)) | values
    args = " ".join(re.findall(r'^(?:GPT|MM|OUTPUT|SORA)_ARGS="(.*?)"', text, re.M | re.S))
    args = re.sub(r"\$\{?(\w+)\}?", lambda m: known.get(m.group(1), m.group(0)), args.replace("\\\n", " "))
    return shlex.split(args)


def needs_cuda(test):
    """Mark ``test`` as a CUDA check: ``pytest -m cuda`` (``nox -s gpu``) selects it; without a GPU it is skipped."""
    import pytest

    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    return pytest.mark.cuda(skip(test))


def run_training(
    plugins: Sequence[str | ModuleType],
    output_dir: str | Path,
    overrides: Sequence[str] = (),
    files: Sequence[str | Path] = (),
    sections: dict | None = None,
) -> TrainResult:
    """Train with ``plugins`` as ``mm run`` would, writing into ``output_dir``; returns the result."""
    pm = load_plugins(list(plugins))
    config = make_config(pm, "run", files, sections, [*overrides, f"training.output_dir={output_dir}"])
    runtime = create_runtime(config)
    return Trainer(pm, runtime).train()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned_worker(rank: int, world: int, port: int, plugins, output_dir, overrides, sys_path) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    sys.path[:0] = list(sys_path)
    try:
        result = run_training(plugins, output_dir, overrides)
        if rank == 0:
            Path(output_dir, "losses.json").write_text(json.dumps(result.losses))
        # Every rank done with its last sends before any tears the group down (a rank that left first once
        # aborted its peer's gloo threads on a loaded machine).
        if dist.is_initialized():
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_training(
    world_size: int,
    plugins: Sequence[str],
    output_dir: str | Path,
    overrides: Sequence[str] = (),
    sys_path: Sequence[str] = (),
) -> dict[int, float]:
    """Train in ``world_size`` gloo processes on the CPU, as torchrun would; returns the per-step losses."""
    import torch.multiprocessing as mp

    args = (world_size, _free_port(), list(plugins), str(output_dir), ["training.device=cpu", *overrides],
            [str(p) for p in sys_path])
    mp.spawn(_spawned_worker, args=args, nprocs=world_size, join=True)
    return {int(k): v for k, v in json.loads(Path(output_dir, "losses.json").read_text()).items()}
