"""DCP checkpoints, written to a temp dir and then renamed, so a crash keeps the last good one."""

from __future__ import annotations

import contextlib
import logging
import random
import re
import shutil
import warnings
from errno import ENOSPC
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from mm_core import lora, manifest
from mm_core.config import dump
from mm_core.errors import CheckpointError

log = logging.getLogger("mm")

# Optimizer state keyed by parameter name: the same on every layout, pipeline stages included.
FLAT_OPTIMIZER = StateDictOptions(flatten_optimizer_state_dict=True)
STEP_DIR = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.pt"
CONFIG_FILE = "config.yaml"
RANK_ZERO_FILES = (".metadata", TRAINER_STATE, CONFIG_FILE)


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

    def __init__(self, root: Path, runtime, keep_last: int = 3, plugins: list[str] | tuple = ()) -> None:
        self.root = Path(root)
        self.runtime = runtime
        self.keep_last = keep_last
        self.plugins = list(plugins)  # the plugin stack that builds the model again (export of a LoRA run)

    def save(self, step: int, model, optimizer, scheduler, data_iter) -> Path:
        """Write checkpoint ``step_<step>`` atomically and prune old ones; returns its path.

        A write that fails on any rank (a full disk, say) removes what it wrote and raises one CheckpointError
        on every rank; the previous checkpoints stay as they were.
        """
        rt = self.runtime
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".tmp_step_{step:08d}"
        model_sd, optim_sd = get_state_dict(model, optimizer, options=FLAT_OPTIMIZER)
        state = {"model": lora.without_frozen(model, model_sd), "optim": optim_sd}
        need = _all_ranks_sum(_tensor_bytes(state), rt.device)
        if rt.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        rt.barrier()
        free = shutil.disk_usage(self.root).free
        too_full = _any_rank(free < need, rt.device)
        error: BaseException | None = None
        if not too_full:
            try:
                self._write(tmp, step, state, scheduler, data_iter)
            except (Exception, CheckpointException) as exc:  # CheckpointException is a BaseException
                error = exc
        if too_full or _any_rank(error is not None, rt.device):
            if rt.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(self._write_failure(step, error, need, free))
        rt.barrier()
        if rt.is_main:
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            self._prune()
        rt.barrier()
        return final

    def _write(self, tmp: Path, step: int, state: dict, scheduler, data_iter) -> None:
        """Every rank's files of one checkpoint into ``tmp``, the manifest last."""
        rt = self.runtime
        with _single_process_ok():
            dcp.save(state, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
        torch.save({"rng": rng_state(rt.device)}, tmp / f"rank_{rt.rank:05d}.pt")
        if rt.is_main:
            # Rank 0 reads data on every layout; its position in the global stream is the run's.
            torch.save(
                {"step": step, "scheduler": scheduler.state_dict(), "world_size": rt.world_size,
                 "dp_size": rt.dp_size, "dims": dict(rt.dims), "data": data_iter.state_dict(),
                 "plugins": self.plugins},
                tmp / TRAINER_STATE,
            )
            (tmp / CONFIG_FILE).write_text(dump(rt.config), encoding="utf-8")
        rt.barrier()
        manifest.write(tmp, rt.rank, RANK_ZERO_FILES)

    def _write_failure(self, step: int, error: BaseException | None, need: int, free: int) -> str:
        """One line: why checkpoint ``step`` was not written, what it needs, and the checkpoint still intact."""
        previous = latest_checkpoint(self.root)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        if error is None or "No space left on device" in str(error) or getattr(error, "errno", None) == ENOSPC:
            return (f"no space left on the device of {self.root} for checkpoint step {step}: it needs about "
                    f"{_size(need)}, {_size(free)} were free; free some space or set training.output_dir elsewhere "
                    f"({kept})")
        return f"could not write checkpoint step {step} to {self.root}: {_cause(error)} ({kept})"

    def resumable(self) -> Path | None:
        """The newest checkpoint whose files match its manifest; damaged newer ones are named in a warning."""
        rt = self.runtime
        for _, path in reversed(list_checkpoints(self.root)):
            problem = manifest.damage(path, rt.rank, rt.world_size)
            if problem is None:
                return path
            log.warning("checkpoint %s is damaged (%s): trying the one before it", path, problem)
        return None

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
        data_iter.load_state_dict(_data_state(path, trainer_state, rt))
        saved = trainer_state.get("dims")
        if (saved == dict(rt.dims)) if saved is not None else trainer_state["world_size"] == rt.world_size:
            set_rng_state(torch.load(path / f"rank_{rt.rank:05d}.pt", weights_only=False)["rng"], rt.device)
        else:
            log.warning("checkpoint %s was saved on another layout (%s), resuming on %s: RNG streams restart "
                        "from the seed", path, _layout(trainer_state), _layout({"dims": rt.dims}))
        return int(trainer_state["step"])


def _data_state(path: Path, trainer_state: dict, rt) -> dict:
    """The data position of the run; checkpoints before it was kept by rank 0 count rank 0's micro-batches."""
    if "data" in trainer_state:
        return trainer_state["data"]
    data = torch.load(path / "rank_00000.pt", weights_only=False)["data"]
    return {**data, "samples_per_batch": rt.config.training.micro_batch_size * trainer_state["dp_size"]}


def _layout(trainer_state: dict) -> str:
    """``pp=2 dp=1 cp=1 ...`` of a saved (or current) layout."""
    dims = trainer_state.get("dims") or {"world": trainer_state["world_size"]}
    return " ".join(f"{name}={size}" for name, size in dims.items())


def _tensor_bytes(state: Any) -> int:
    """Bytes of this rank's tensors (local shards) in a nested state dict."""
    if isinstance(state, dict):
        return sum(_tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_tensor_bytes(v) for v in state)
    if isinstance(state, torch.Tensor):
        local = state.to_local() if hasattr(state, "to_local") else state
        return local.numel() * local.element_size()
    return 0


def _all_ranks_sum(value: int, device: torch.device) -> int:
    """``value`` summed over every rank."""
    if not dist.is_initialized():
        return value
    total = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return int(total.item())


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any."""
    return _all_ranks_sum(int(flag), device) > 0


def _size(size: int) -> str:
    """``size`` bytes in the largest binary unit that keeps a leading digit: 3.2 GiB, 41.0 KiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def load_model_state(path: Path, model, optimizer=None) -> None:
    """Load model (and optimizer) weights from a DCP checkpoint dir into possibly sharded modules.

    A LoRA run's checkpoint holds the adapters only: a model without them (``mm infer``) gets them first.
    """
    if not (Path(path) / ".metadata").is_file():
        raise CheckpointError(f"{path} holds no torch.distributed.checkpoint (.metadata is missing)")
    flatten = optimizer is not None and _flat_optimizer_state(path)
    adapters = lora.checkpoint_settings(path)
    if adapters is not None and not lora.has_adapters(model):
        if optimizer is not None:
            raise CheckpointError(f"{path} is a LoRA run's checkpoint (adapters only): resume it with its "
                                  f"model.lora (rank {adapters.rank}), or export it merged to train on in full")
        lora.inject(model, adapters, adapters.target_modules)
    model_sd, optim_sd = get_state_dict(
        model, optimizer or [], options=StateDictOptions(flatten_optimizer_state_dict=flatten)
    )
    state: dict[str, Any] = {"model": lora.without_frozen(model, model_sd)}
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
        options=StateDictOptions(strict=not lora.has_adapters(model), flatten_optimizer_state_dict=flatten),
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
