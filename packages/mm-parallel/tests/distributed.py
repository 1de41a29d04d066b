"""Run a function on N gloo ranks of this machine, as torchrun would, and re-raise a rank's failure."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import torch.distributed as dist
import torch.multiprocessing as mp

# Ranks fork from one server that imported these once: a spawn per rank would import torch again.
mp.set_forkserver_preload(["torch", "torch.distributed.fsdp", "mm_core.trainer", "mm_parallel.plugin"])


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    try:
        fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(world: int, fn: Callable, *args) -> None:
    """Call ``fn(*args)`` on ``world`` ranks (RANK, WORLD_SIZE... set as torchrun does); fails if any rank fails."""
    mp.start_processes(_rank_main, args=(world, free_port(), fn, args), nprocs=world, start_method="forkserver")
