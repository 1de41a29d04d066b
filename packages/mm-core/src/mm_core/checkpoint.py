"""DCP checkpoints, written to a temp dir and then renamed, so a crash keeps the last good one."""

from __future__ import annotations

import contextlib
import logging
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from mm_core.config import dump
from mm_core.errors import CheckpointError

log = logging.getLogger("mm")

# Optimizer state keyed by parameter name: the same on every layout, pipeline stages included.
FLAT_OPTIMIZER = StateDictOptions(flatten_optimizer_state_dict=True)
STEP_DIR = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.pt"
CONFIG_FILE = "config.yaml"


@contextlib.contextmanager
def _single_process_ok():
    """Silence DCP's warning that a run without a process group saves in one process: that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def rng_state(device: torch.device) -> dict:
    """Every random generator's state on this rank."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type != "cpu":
        state["device"] = torch.get_device_module(device.type).get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "device" in state and device.type != "cpu":
        torch.get_device_module(device.type).set_rng_state(state["device"], device)


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, path), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


class CheckpointManager:
    """Saves and restores model, optimizer, LR scheduler, RNG and data position under ``root``."""

    def __init__(self, root: Path, runtime, keep_last: int = 3) -> None:
        self.root = Path(root)
        self.runtime = runtime
        self.keep_last = keep_last

    def save(self, step: int, model, optimizer, scheduler, data_iter) -> Path:
        """Write checkpoint ``step_<step>`` atomically and prune old ones; returns its path."""
        rt = self.runtime
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".tmp_step_{step:08d}"
        if rt.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        rt.barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer, options=FLAT_OPTIMIZER)
        with _single_process_ok():
            state = {"model": model_sd, "optim": optim_sd}
            dcp.save(state, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
        torch.save(
            {"rng": rng_state(rt.device), "data": data_iter.state_dict()},
            tmp / f"rank_{rt.rank:05d}.pt",
        )
        if rt.is_main:
            torch.save(
                {"step": step, "scheduler": scheduler.state_dict(), "world_size": rt.world_size, "dp_size": rt.dp_size},
                tmp / TRAINER_STATE,
            )
            (tmp / CONFIG_FILE).write_text(dump(rt.config), encoding="utf-8")
        rt.barrier()
        if rt.is_main:
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            self._prune()
        rt.barrier()
        return final

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        for _, path in list_checkpoints(self.root)[: -self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)

    def load(self, path: Path, model, optimizer, scheduler, data_iter) -> int:
        """Restore everything saved in ``path``; returns the step it was saved at."""
        rt = self.runtime
        state_file = path / TRAINER_STATE
        if not state_file.is_file():
            raise CheckpointError(f"{path} is not an mm training checkpoint (no {TRAINER_STATE})")
        trainer_state = torch.load(state_file, weights_only=False)
        load_model_state(path, model, optimizer)
        scheduler.load_state_dict(trainer_state["scheduler"])
        rank_file = path / f"rank_{rt.rank:05d}.pt"
        if trainer_state["world_size"] == rt.world_size and rank_file.is_file():
            rank_state = torch.load(rank_file, weights_only=False)
            set_rng_state(rank_state["rng"], rt.device)
            data_iter.load_state_dict(rank_state["data"])
        else:
            data = torch.load(path / "rank_00000.pt", weights_only=False)["data"]
            # Positions count this rank's micro-batches; rescale them to the new data-parallel size.
            old_dp = trainer_state["dp_size"]
            if (data["position"] * old_dp) % rt.dp_size:
                raise CheckpointError(
                    f"{path} stopped mid-way through a data-parallel round of {old_dp} ranks that "
                    f"{rt.dp_size} ranks cannot continue exactly; resume with a data-parallel size dividing "
                    f"{data['position'] * old_dp}"
                )
            data_iter.load_state_dict({**data, "position": data["position"] * old_dp // rt.dp_size})
            log.warning(
                "checkpoint %s was saved by %d ranks, resuming on %d: RNG streams restart from the seed",
                path,
                trainer_state["world_size"],
                rt.world_size,
            )
        return int(trainer_state["step"])


def load_model_state(path: Path, model, optimizer=None) -> None:
    """Load model (and optimizer) weights from a DCP checkpoint dir into possibly sharded modules."""
    if not (Path(path) / ".metadata").is_file():
        raise CheckpointError(f"{path} holds no torch.distributed.checkpoint (.metadata is missing)")
    flatten = optimizer is not None and _flat_optimizer_state(path)
    model_sd, optim_sd = get_state_dict(
        model, optimizer or [], options=StateDictOptions(flatten_optimizer_state_dict=flatten)
    )
    state: dict[str, Any] = {"model": model_sd}
    if optimizer is not None:
        state["optim"] = optim_sd
    try:
        with _single_process_ok():
            dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    except (Exception, CheckpointException) as exc:  # CheckpointException is a BaseException
        raise CheckpointError(f"checkpoint {path} does not match the model: {_cause(exc)}") from exc
    set_state_dict(
        model,
        optimizer or [],
        model_state_dict=state["model"],
        optim_state_dict=state.get("optim", {}),
        options=StateDictOptions(strict=True, flatten_optimizer_state_dict=flatten),
    )


def _flat_optimizer_state(path: Path) -> bool:
    """Whether the checkpoint keys its optimizer's param groups by parameter name (mm writes them so).

    Keyed by group index, as mm's earlier checkpoints are, the groups of ranks that hold different parameters
    (pipeline stages) overwrite each other; those checkpoints are still read as they were written.
    """
    keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return not any(re.fullmatch(r"optim\.param_groups\.\d+\.lr", key) for key in keys)


def _cause(exc: BaseException) -> str:
    """The one line of a (multi-rank) DCP failure that says what did not match."""
    text = str(exc).strip()
    found = re.search(r"(Size mismatch[^\n]+|Missing key[^\n]+|Unexpected key[^\n]+)", text)
    if found:
        return found.group(1)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
