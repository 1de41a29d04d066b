"""mm-parallel's engine plugin (entry point ``parallel`` of group ``mm.engines``)."""

from __future__ import annotations

import copy

import torch

from mm_core import hookimpl
from mm_core.config import Config
from mm_core.plan import ParallelPlan
from mm_core.runtime import Runtime
from mm_parallel.compile import COMPILE_DEFAULTS
from mm_parallel.fsdp2 import FSDP2_DEFAULTS
from mm_parallel.meta_init import is_meta
from mm_parallel.parallelize import parallelize


@hookimpl
def default_config(task: str) -> dict:
    """``parallel.fsdp2`` (the seeds' fsdp2_config.yaml keys with their defaults) and ``parallel.compile``, both off."""
    return {"parallel": {"fsdp2": copy.deepcopy(FSDP2_DEFAULTS), "compile": copy.deepcopy(COMPILE_DEFAULTS)}}


@hookimpl
def parallelize_model(
    model: torch.nn.Module, plan: ParallelPlan, config: Config, runtime: Runtime
) -> torch.nn.Module | None:
    """Apply PP, TP, CP, recompute, compile and FSDP2, and materialize meta models; None (mm-core's DDP) if none
    asked."""
    fsdp = config.parallel.fsdp2
    par = config.parallel
    wanted = (fsdp.enable or fsdp.recompute_modules or par.recompute.granularity or par.compile.enable
              or par.cp.size > 1 or par.pp.size > 1 or par.tp.size > 1)
    if not (wanted or is_meta(model)):
        return None
    return parallelize(model, plan, config, runtime)
