"""Helpers for the opensoraplan1_3 tests: Skiparse as a dense mask, small-clip overrides, the effective config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mm_core.config import Config
from mm_core.plugins import load_plugins, make_config
from mm_core.testing import spawn_training

QUIET = ["logging.progress_bar=false"]


def skiparse_dense_bias(length: int, sparse_n: int, grouped: bool, video_bias: torch.Tensor | None) -> torch.Tensor:
    """The additive mask [B or 1, 1, S, S] under which dense attention is Skiparse: query and key in one subset."""
    positions = torch.arange(length)
    subset = (positions // sparse_n) % sparse_n if grouped else positions % sparse_n
    same = subset[:, None] == subset[None, :]
    bias = torch.where(same, 0.0, float("-inf"))[None, None]
    if video_bias is not None:
        bias = bias + video_bias[:, None, None, :]
    return bias


def osp_config(*overrides: str, task: str = "run", files: tuple = (), sections: dict | None = None) -> Config:
    """The effective opensoraplan1_3 config with ``overrides``, as ``mm`` builds it."""
    return make_config(load_plugins(["opensoraplan1_3"]), task, list(files), sections, [*QUIET, *overrides])


# Three steps of four single-clip micro-batches: every data-parallel size up to 4 sees the same global batch.
# 32×48 clips: 3 × 2 × 3 = 18 tokens, padded to 20 by Skiparse (sparse_n 2) and split 9 / 9 over 2 cp ranks.
SHORT_RUN = [
    *QUIET,
    "data.dataset_param.max_height=32",
    "data.dataset_param.max_width=48",
    "training.micro_batch_size=1",
    "training.global_batch_size=4",
    "training.train_iters=3",
    "training.lr_warmup_iters=0",
    "training.save_interval=0",
]


def parallel_run(world: int, output_dir: Path, *overrides: str) -> dict[str, list[float]]:
    """Train the tiny opensoraplan1_3 on ``world`` gloo processes (one thread each); per-step loss and grad norm."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        spawn_training(world, ["opensoraplan1_3"], output_dir, [*SHORT_RUN, *overrides])
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = old
    lines = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    return {key: [line[key] for line in lines] for key in ("loss", "grad_norm")}


def _extract_worker(rank: int, world: int, port: int, overrides: list[str]) -> None:
    import torch.distributed as dist

    from mm_core.runtime import create_runtime
    from mm_models_video.opensoraplan1_3.extract import extract_features

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    config = osp_config("training.device=cpu", *overrides, task="extract")
    try:
        extract_features(config, create_runtime(config))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_extraction(world: int, *overrides: str) -> None:
    """``mm extract --plugin opensoraplan1_3`` with ``overrides`` on ``world`` gloo processes, as torchrun would."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_extract_worker, args=(world, port, list(overrides)), nprocs=world, join=True)
