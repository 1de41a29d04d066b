"""A MindSpeed-MM checkpoint that a run loads (``--load``): recognized, and converted once into a cache folder."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from mm_convert.dcp_layout import find_dcp
from mm_convert.megatron_layout import ITERATION_FILE


def is_mindspeed_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a MindSpeed-MM checkpoint folder: Megatron's (``latest_checkpointed_iteration.txt``,
    ``release/`` or ``iter_*/mp_rank_*``) or FSDP2's (a torch.distributed.checkpoint with its ``.metadata``, in it
    or in its ``release/`` or ``iter_*/``)."""
    path = Path(path)
    return ((path / ITERATION_FILE).is_file() or (path / "release").is_dir() or any(path.glob("iter_*/mp_rank_*"))
            or find_dcp(path) is not None)


def converted_once(checkpoint: Path, cache: Path, prefix: str, convert: Callable[[Path], None]) -> Path:
    """The folder under ``cache`` that ``convert(target)`` fills from ``checkpoint``, named by the checkpoint's files
    (their paths, sizes and times), so a changed checkpoint converts again; rank 0 converts, the other ranks wait."""
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file())
    stamp = hashlib.sha256("\n".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files).encode())
    target = cache / f"{prefix}-{stamp.hexdigest()[:16]}"
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not (target / "config.json").is_file() and (not distributed or torch.distributed.get_rank() == 0):
        convert(target)
    if distributed:
        torch.distributed.barrier()
    return target
