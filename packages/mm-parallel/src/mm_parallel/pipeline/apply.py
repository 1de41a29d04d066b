"""Pipeline parallelism applied to a model: cut it into this rank's stages, shard, place and load them."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

from mm_core.checkpoint import load_model_state
from mm_core.config import Config
from mm_core.plan import ParallelPlan, Pretrained
from mm_core.runtime import Runtime
from mm_parallel.fsdp2 import apply_fsdp2, data_parallel_mesh, resolve
from mm_parallel.meta_init import materialize
from mm_parallel.patterns import expand, named_modules
from mm_parallel.pipeline.chunk import PipelineChunk
from mm_parallel.pipeline.layout import local_stages
from mm_parallel.pipeline.plan import StagePlan, check_coverage, layer_ranges
from mm_parallel.pipeline.runner import PipelineModel, check_schedule
from mm_parallel.pipeline.split import split_stages
from mm_parallel.pipeline.tied import TiedWeights


def _shard(chunks: list[PipelineChunk], wrapped: list[str], ignored: list[str], fsdp: Config, runtime: Runtime) -> None:
    """FSDP2 on each stage as its own root, wrapping the modules of ``wrapped`` (paths in the model) that it holds."""
    mesh = data_parallel_mesh(runtime)
    for chunk in chunks:
        names = set(named_modules(chunk))
        options = {
            **fsdp,
            "sub_modules_to_wrap": [f"model.{n}" for n in wrapped if f"model.{n}" in names],
            "ignored_modules": [f"model.{n}" for n in ignored if f"model.{n}" in names],
        }
        apply_fsdp2(chunk, mesh, options)


def _load_pretrained(pipe: PipelineModel, source: Pretrained) -> None:
    """Load this rank's share of the plugin's pretrained weights (a DCP directory or a full state dict function).

    Unlike without PP, every rank calls the function: each stage needs different weights.
    """
    if isinstance(source, (str, Path)):
        load_model_state(Path(source), pipe)
        return
    keys = set(get_model_state_dict(pipe))
    state = {k: v for k, v in source().items() if k in keys}
    set_model_state_dict(pipe, state, options=StateDictOptions(full_state_dict=True, strict=True))


def apply_pipeline(
    model: torch.nn.Module, plan: ParallelPlan, config: Config, runtime: Runtime, on_meta: bool
) -> PipelineModel:
    """Cut ``model`` into this rank's stages, shard each with FSDP2 over dp_shard, allocate and place them.

    FSDP2's module patterns are resolved on the whole model first, so that a pattern naming layers of other
    stages is no error; each stage then wraps the modules it holds, and is its own FSDP2 root.
    """
    pp, fsdp = config.parallel.pp, config.parallel.fsdp2
    pp_size, virtual = int(pp.size), int(pp.virtual_stages)
    check_schedule(pp.schedule, virtual)
    stage_plan = StagePlan.from_plan(plan.pipeline)
    tied_pairs = check_coverage(model, stage_plan)  # checked on the whole model, before it is cut
    ranges = layer_ranges(model, stage_plan, pp_size, virtual, pp.pipeline_num_layers)
    wrapped = [n for n, _ in resolve(model, fsdp, plan.fsdp_modules)[0]] if fsdp.enable else []
    ignored = [n for n, _ in expand(fsdp.ignored_modules, model, "parallel.fsdp2.ignored_modules")]
    mesh = runtime.submesh("pp")
    stages = local_stages(mesh.get_local_rank(), pp_size, virtual)
    modules = split_stages(model, stage_plan, ranges, stages)
    chunks = [PipelineChunk(module, stage_plan, stage, len(ranges)) for module, stage in zip(modules, stages)]
    if fsdp.enable:
        _shard(chunks, wrapped, ignored, fsdp, runtime)
    for chunk in chunks:
        if on_meta:
            materialize(chunk.model, runtime.device, offload=fsdp.enable and fsdp.offload_to_cpu)
        else:
            chunk.to(runtime.device)
    last_rank = (len(ranges) - 1) % pp_size
    pipe = PipelineModel(
        chunks, TiedWeights.find(tied_pairs, chunks, last_rank, mesh.get_group()), pp.schedule, pp_size, runtime
    )
    if on_meta and plan.pretrained is not None:
        _load_pretrained(pipe, plan.pretrained)
    pipe.tied.sync()
    if not fsdp.enable and runtime.dp_size * runtime.dims["cp"] > 1:
        # Replicas must start equal, as DDP would make them: every rank takes its data-parallel group's first.
        group = runtime.submesh("dp_cp")
        for tensor in pipe.state_dict().values():
            dist.broadcast(tensor, group=group.get_group(), group_src=0)
    return pipe
