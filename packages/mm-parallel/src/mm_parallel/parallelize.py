"""Apply the parallel engines to a model in torchtitan's fixed order."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping

import torch

from mm_core import defaults
from mm_core.config import Config
from mm_core.plan import ParallelPlan
from mm_core.runtime import Runtime
from mm_parallel.compile import apply_compile, check_compile_options
from mm_parallel.context_plan import apply_context_parallel
from mm_parallel.fsdp2 import apply_fsdp2, check_options, data_parallel_mesh, resolve
from mm_parallel.meta_init import is_meta, materialize
from mm_parallel.patterns import with_aliases
from mm_parallel.pipeline import apply_pipeline
from mm_parallel.recompute import apply_recompute, recompute_settings
from mm_parallel.tensor_parallel import apply_tensor_parallel, shard_sequence

log = logging.getLogger("mm")

ALIASED_OPTIONS = ("sub_modules_to_wrap", "ignored_modules", "recompute_modules")


def _aliased(config: Config, aliases: Mapping[str, str]) -> Config:
    """``config`` with MindSpeed-MM's module paths in the fsdp2 patterns read as the model's (the plan's aliases)."""
    if not aliases:
        return config
    config = copy.deepcopy(config)
    for option in ALIASED_OPTIONS:
        config.parallel.fsdp2[option] = with_aliases(config.parallel.fsdp2[option], aliases)
    return config


def parallelize(model: torch.nn.Module, plan: ParallelPlan, config: Config, runtime: Runtime) -> torch.nn.Module:
    """PP → TP → CP → activation checkpointing → compile → FSDP2, then materialize a meta model and place it.

    TP splits the layers before CP installs its sequence split; TP's own sequence split (sequence parallelism)
    is installed after it, so that it runs inside CP's. With PP (``parallel.pp.size > 1``) activation
    checkpointing applies to the whole model before it is cut into stages, and FSDP2 to each stage
    (:func:`mm_parallel.pipeline.apply_pipeline`).
    Without FSDP2 (disabled, or one process) the model is placed and wrapped by mm-core's default: DDP when
    data-parallel.
    """
    config = _aliased(config, plan.module_aliases)
    fsdp = config.parallel.fsdp2
    compile_options = config.parallel.compile
    check_options(fsdp)
    check_compile_options(compile_options)
    on_meta = is_meta(model)
    tensor_parallel = apply_tensor_parallel(model, plan, config, runtime)
    plan = apply_context_parallel(model, plan, config, runtime)
    if tensor_parallel and config.parallel.tp.sequence_parallel:
        shard_sequence(model, plan.tp, runtime.submesh("tp"))
    recompute_modules, recompute_mode = recompute_settings(config.parallel, plan)
    model = apply_recompute(model, modules=recompute_modules, use_reentrant=fsdp.use_reentrant, mode=recompute_mode)
    if compile_options.enable:
        options = {k: v for k, v in compile_options.items() if k not in ("enable", "modules")}
        apply_compile(model, compile_options.modules or plan.fsdp_modules, **options)
    if config.parallel.pp.size > 1:
        return apply_pipeline(model, plan, config, runtime, on_meta)
    sharded = bool(fsdp.enable) and runtime.mesh is not None
    if sharded:
        model = apply_fsdp2(model, data_parallel_mesh(runtime), fsdp, default_modules=plan.fsdp_modules,
                            ignored=plan.fsdp_ignored)
    elif fsdp.enable:
        resolve(model, fsdp, plan.fsdp_modules, plan.fsdp_ignored)
        log.info("parallel.fsdp2: one process, nothing to shard; the model trains unsharded in its own dtype")
    if on_meta:
        materialize(model, runtime.device, plan.pretrained, offload=sharded and fsdp.offload_to_cpu)
    if sharded:
        return model
    return defaults.parallelize_model(model=model, plan=plan, config=config, runtime=runtime)
