"""The Runtime: accelerator, process group, device mesh, seed and output directory of a run."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mm_core.config import Config
from mm_core.errors import ConfigError

log = logging.getLogger("mm")

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
BACKENDS = {"cuda": "nccl", "npu": "hccl", "cpu": "gloo"}


def detect_device(requested: str | None = None) -> torch.device:
    """The device to run on: ``requested`` if given, else the accelerator (cuda, npu) or cpu."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError as exc:
            raise ConfigError(f"training.device {requested!r} is not a device name like cpu, cuda, npu") from exc
        if device.type != "cpu" and not _accelerator_available(device.type):
            raise ConfigError(f"training.device is {requested!r} but no {device.type} device is available")
        return device
    with contextlib.suppress(ImportError):
        import torch_npu  # noqa: F401  (registers the npu accelerator)
    acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return torch.device(acc.type) if acc is not None else torch.device("cpu")


def _accelerator_available(kind: str) -> bool:
    acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return acc is not None and acc.type == kind


def mesh_shape(config: Config, world_size: int) -> dict[str, int]:
    """Sizes of the named mesh dims for ``world_size`` ranks, checking that they divide."""
    par = config.get("parallel", {})
    pp = int(par.get("pp", {}).get("size", 1))
    cp = int(par.get("cp", {}).get("size", 1))
    tp = int(par.get("tp", {}).get("size", 1))
    for name, size in (("parallel.pp.size", pp), ("parallel.cp.size", cp), ("parallel.tp.size", tp)):
        if size < 1:
            raise ConfigError(f"{name} must be at least 1, got {size}")
    if world_size % (pp * cp * tp):
        sizes = "pp.size × cp.size" + (" × tp.size" if tp > 1 else "")
        values = f"{pp} × {cp}" + (f" × {tp}" if tp > 1 else "")
        raise ConfigError(
            f"world size {world_size} is not divisible by {sizes} = {values}; "
            "launch a multiple of that many processes"
        )
    dp = world_size // (pp * cp * tp)
    fsdp = par.get("fsdp2", {}) or {}
    shard = 1
    if fsdp.get("enable"):
        raw = fsdp.get("sharding_size", 1)
        if raw not in (None, "auto") and (isinstance(raw, bool) or not isinstance(raw, int)):
            raise ConfigError(f"parallel.fsdp2.sharding_size must be auto or an integer, got {raw!r}")
        shard = dp if raw in (None, "auto") else raw
        if shard < 1 or dp % shard:
            raise ConfigError(
                f"parallel.fsdp2.sharding_size {raw!r} must divide the data-parallel size {dp} "
                f"(world {world_size} / pp {pp} / cp {cp}" + (f" / tp {tp})" if tp > 1 else ")")
            )
    return {"pp": pp, "dp_replicate": dp // shard, "dp_shard": shard, "cp": cp, "tp": tp}


@dataclass
class Runtime:
    """Where and how this process runs; built once per run and passed to every hook."""

    config: Config
    device: torch.device
    output_dir: Path
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    mesh: object | None = None
    dims: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MESH_DIMS, 1))
    flat_meshes: dict[str, object] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        """True on global rank 0, which writes logs and shared files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one rank is up."""
        return self.world_size > 1

    @property
    def dp_size(self) -> int:
        """Number of data-parallel replicas (replicate × shard): how many different batches a step sees."""
        return self.dims["dp_replicate"] * self.dims["dp_shard"]

    @property
    def dp_rank(self) -> int:
        """This rank's index among the data-parallel replicas; ranks of one CP/PP/TP group share it."""
        return 0 if self.mesh is None else self.submesh("dp").get_local_rank()

    @property
    def dp_group(self):
        """The data-parallel process group, or None when not distributed."""
        return None if self.mesh is None else self.submesh("dp").get_group()

    def submesh(self, name: str):
        """The mesh of dim ``name`` (``dp``, ``dp_shard``, ``cp``, ``pp``...), or None when not distributed."""
        if self.mesh is None:
            return None
        return self.flat_meshes[name] if name in self.flat_meshes else self.mesh[name]

    def barrier(self) -> None:
        """Wait for every rank (no-op on one process)."""
        if self.distributed:
            dist.barrier()

    def all_reduce_mean(self, value: torch.Tensor, group=None) -> torch.Tensor:
        """Mean of ``value`` over ``group`` (default: data-parallel ranks)."""
        if not self.distributed:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group if group is not None else self.dp_group)
        return value / dist.get_world_size(group if group is not None else self.dp_group)

    def close(self) -> None:
        """Tear down the process group if this runtime created it."""
        if dist.is_initialized():
            dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _restart_store(rank: int, world_size: int, timeout: timedelta) -> dict:
    """After a torchrun restart, the process group's store under a prefix of its own; empty on a first start.

    The store outlives the workers torchrun restarts, and the new workers' groups would read the dead workers'
    addresses from it (gloo then fails with "Connection refused").
    """
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if not attempt:
        return {}
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=rank == 0 and not agent, timeout=timeout)
    return {"store": dist.PrefixStore(f"mm/restart_{attempt}", store), "rank": rank, "world_size": world_size}


def create_runtime(config: Config, plugin_name: str = "mm") -> Runtime:
    """Build the Runtime from the config and torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    training = config.training
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = detect_device(training.get("device"))
    if device.type != "cpu" and device.index is None:
        device = torch.device(device.type, local_rank)
    if device.type != "cpu":
        torch.accelerator.set_device_index(device.index)
    dims = mesh_shape(config, world_size)
    mesh = None
    flat: dict[str, object] = {}
    if world_size > 1:
        if not dist.is_initialized():
            timeout = timedelta(minutes=30)
            dist.init_process_group(
                backend=BACKENDS.get(device.type, "gloo"),
                timeout=timeout,
                device_id=device if device.type != "cpu" else None,
                **_restart_store(rank, world_size, timeout),
            )
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, tuple(dims[d] for d in MESH_DIMS), mesh_dim_names=MESH_DIMS)
        flat["dp"] = mesh["dp_replicate", "dp_shard"]._flatten("dp")
        flat["dp_shard_cp"] = mesh["dp_shard", "cp"]._flatten("dp_shard_cp")
        flat["dp_cp"] = mesh["dp_replicate", "dp_shard", "cp"]._flatten("dp_cp")
        # The ranks that train on the same batch.
        flat["cp_tp"] = mesh["cp", "tp"]._flatten("cp_tp")
    output_dir = Path(training.get("output_dir") or Path("runs") / plugin_name)
    seed_everything(int(training.get("seed", 1234)))
    return Runtime(
        config=config,
        device=device,
        output_dir=output_dir,
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        mesh=mesh,
        dims=dims,
        flat_meshes=flat,
    )

