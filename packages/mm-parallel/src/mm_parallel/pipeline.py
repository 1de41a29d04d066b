"""Pipeline parallelism: cut a plugin's layer stack into stages and run them with torch.distributed.pipelining.

A plugin's ``parallel_plan`` describes its model as ``pre → layers → post`` (:class:`mm_core.plan.PipelinePlan`).
Each pipeline rank keeps the layers of its stages (under their original indices, so ``blocks.7.fc1.weight`` is
called the same with and without PP), the ``pre`` modules when it runs the first stage and the ``post`` modules
when it runs the last. The last stage computes the loss; :class:`PipelineModel` runs a whole step's micro-batches
through a 1F1B, GPipe or interleaved 1F1B schedule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
from torch.distributed.tensor import DTensor

from mm_core.checkpoint import load_model_state
from mm_core.config import Config
from mm_core.errors import ConfigError, PluginError
from mm_core.plan import Carry, ParallelPlan, PipelinePlan
from mm_core.runtime import Runtime
from mm_parallel.fsdp2 import apply_fsdp2, data_parallel_mesh, resolve
from mm_parallel.meta_init import init_weights, materialize
from mm_parallel.patterns import clean_name, expand, named_modules
from mm_parallel.pipeline_layout import check_first_stage_stack, local_stages, stage_layer_counts, stage_ranges

SCHEDULES = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe, "interleaved_1f1b": ScheduleInterleaved1F1B}

Part = torch.nn.Module | torch.Tensor


def call_layer(layer: torch.nn.Module, carry: Carry) -> Carry:
    """The default ``pp_layer``: ``layer(hidden)``, or ``(layer(hidden, *extras), *extras)`` for a tuple."""
    if isinstance(carry, tuple):
        return (layer(*carry), *carry[1:])
    return layer(carry)


@dataclass(frozen=True)
class StagePlan:
    """A plugin's :class:`mm_core.plan.PipelinePlan` resolved for cutting: the cut stack and what runs before it."""

    layers: str
    pre: Callable[[torch.nn.Module, Any], Carry]
    post: Callable[[torch.nn.Module, Carry, Any], Any]
    pre_modules: tuple[str, ...] = ()
    post_modules: tuple[str, ...] = ()
    layer: Callable[[torch.nn.Module, Carry], Carry] = call_layer
    name: str | None = None
    pre_stacks: tuple[tuple[str, str], ...] = ()
    num_layers: Any = None

    @classmethod
    def from_plan(cls, plan: PipelinePlan | None) -> StagePlan:
        """The stages' view of the plugin's pipeline plan; a PluginError when the plugin gives none."""
        if plan is None:
            raise PluginError(
                "parallel.pp.size > 1 needs the plugin's parallel_plan to give a pipeline "
                "(mm_core.PipelinePlan: layers, pre, post; see docs/pipeline_parallel.md)"
            )
        stacks = plan.stacks
        pre_stacks = tuple(stacks[:-1])
        pre_modules = tuple(plan.pre_modules)
        # A stack inside a listed module (model.visual.blocks in model.visual) is already there.
        pre_modules += tuple(path for _, path in pre_stacks if _owner(path, {"pre": pre_modules}) is None)
        return cls(
            layers=stacks[-1][1],
            pre=plan.pre,
            post=plan.post,
            pre_modules=pre_modules,
            post_modules=tuple(plan.post_modules),
            layer=plan.layer or call_layer,
            name=stacks[-1][0],
            pre_stacks=pre_stacks,
            num_layers=plan.num_layers,
        )


class StageLayers(torch.nn.Module):
    """The layers of a stack that one rank holds, under their original indices; iterates like a ModuleList."""

    def __init__(self, layers: Mapping[int, torch.nn.Module]) -> None:
        super().__init__()
        for index, layer in layers.items():
            self.add_module(str(index), layer)

    def __iter__(self) -> Iterator[torch.nn.Module]:
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, index: int) -> torch.nn.Module:
        return self._modules[str(index)]


def _lookup(model: torch.nn.Module, path: str) -> Part:
    """The module, parameter or buffer at ``path`` (activation-checkpoint wrappers add no path segment)."""
    modules = named_modules(model)
    if path in modules:
        return modules[path]
    parent, _, name = path.rpartition(".")
    owner = modules.get(parent)
    tensor = None if owner is None else owner._parameters.get(name, owner._buffers.get(name))
    if tensor is None:
        raise PluginError(f"parallel_plan names {path!r}, which is no module, parameter or buffer of the model")
    return tensor


def _attach(root: torch.nn.Module, parts: Mapping[str, torch.nn.Module]) -> torch.nn.Module:
    """Register each module under its path in ``root``, creating plain containers for the modules in between."""
    for path, part in parts.items():
        node = root
        *parents, name = path.split(".")
        for parent in parents:
            if parent not in node._modules:
                node.add_module(parent, torch.nn.Module())
            node = node._modules[parent]
        node.add_module(name, part)
    return root


def _owner(path: str, groups: Mapping[str, Sequence[str]]) -> str | None:
    """Which group (layers, pre, post) a parameter or buffer path falls under."""
    for group, prefixes in groups.items():
        if any(path == p or path.startswith(p + ".") for p in prefixes):
            return group
    return None


def _check_coverage(model: torch.nn.Module, plan: StagePlan) -> list[tuple[str, str]]:
    """Every parameter and persistent buffer belongs to exactly one of layers / pre / post.

    Returns the weights tied between pre and post (an LLM's input embedding and output projection) as
    ``(pre name, post name)`` pairs; any other weight shared between groups is an error.
    """
    groups = {"pp_layers": [plan.layers], "pp_pre_modules": plan.pre_modules, "pp_post_modules": plan.post_modules}
    seen: dict[int, tuple[str, str]] = {}
    tied: list[tuple[str, str]] = []
    for name, param in model.named_parameters(remove_duplicate=False):
        name = clean_name(name)
        group = _owner(name, groups)
        if group is None:
            raise PluginError(
                f"parameter {name!r} is in none of the parallel_plan's pp_layers ({plan.layers!r}), pp_pre_modules "
                f"{list(plan.pre_modules)} or pp_post_modules {list(plan.post_modules)}; name its module in one"
            )
        first = seen.setdefault(id(param), (name, group))
        if first[1] == group:
            continue
        if {first[1], group} != {"pp_pre_modules", "pp_post_modules"}:
            raise PluginError(
                f"parameter {name!r} ({group}) is tied to {first[0]!r} ({first[1]}): only weights shared between "
                "pp_pre_modules and pp_post_modules can be tied across pipeline stages; untie them"
            )
        pair = (first[0], name) if first[1] == "pp_pre_modules" else (name, first[0])
        if pair not in tied:
            tied.append(pair)
    persistent = set(model.state_dict(keep_vars=True))
    for name, _ in model.named_buffers():
        if name in persistent and _owner(clean_name(name), groups) is None:
            raise PluginError(
                f"buffer {clean_name(name)!r} is saved in checkpoints but is in none of the parallel_plan's pp_layers, "
                "pp_pre_modules or pp_post_modules; name its module in one"
            )
    return tied


def _remove(model: torch.nn.Module, path: str) -> None:
    """Drop the module, parameter or buffer at ``path`` from ``model`` (a rank that does not run it)."""
    parent_path, _, name = path.rpartition(".")
    parent = named_modules(model)[parent_path]
    for slots in (parent._parameters, parent._buffers, parent._modules):
        if name in slots:
            slots[name] = None


def _set_parameter(model: torch.nn.Module, path: str, param: torch.nn.Parameter) -> None:
    """Register ``param`` at ``path``, creating empty modules where the path's modules were pruned."""
    node = model
    *parents, name = path.split(".")
    for parent in parents:
        if node._modules.get(parent) is None:
            node._modules[parent] = torch.nn.Module()
        node = node._modules[parent]
    node._parameters[name] = param


@dataclass
class _Step:
    """What the stages need while a schedule runs: the trainer's loss and autocast, and the losses so far."""

    loss_fn: Callable[[Any, Any], tuple[torch.Tensor, dict]]
    autocast: Callable[[], contextlib.AbstractContextManager]
    micro_batches: int
    records: list[tuple[torch.Tensor, dict]] = field(default_factory=list)


class PipelineChunk(torch.nn.Module):
    """One stage's modules, under their original paths; its forward runs pre (first), layers, post + loss (last).

    Parameters and buffers that ``pp_pre`` / ``pp_post`` name directly stay with the plugin's model only (a tensor
    registered in two modules would part ways as soon as FSDP2 or allocation replaces it).
    """

    def __init__(
        self, pipeline: PipelineModel, stage: int, layers: list[torch.nn.Module], parts: Mapping[str, Part]
    ) -> None:
        super().__init__()
        _attach(self, {path: part for path, part in parts.items() if isinstance(part, torch.nn.Module)})
        # Plain attributes, not submodules: each parameter is registered once, through ``parts``.
        object.__setattr__(self, "_pipeline", pipeline)
        object.__setattr__(self, "_layers", layers)
        self.stage = stage
        self.is_first = stage == 0
        self.is_last = stage == pipeline.num_stages - 1

    def forward(self, *carry: torch.Tensor, batch: Any = None) -> Carry:
        """Run this stage on one micro-batch; the last stage returns the loss, divided by the micro-batch count."""
        pipe = self._pipeline
        step, plan, model = pipe.step, pipe.plan, pipe.module
        with step.autocast():
            hidden: Any = plan.pre(model, batch) if self.is_first else (carry[0] if len(carry) == 1 else carry)
            if not isinstance(hidden, torch.Tensor) and not (
                isinstance(hidden, tuple) and all(isinstance(t, torch.Tensor) for t in hidden)
            ):
                raise PluginError(f"parallel_plan pp_pre must return a tensor or a tuple of tensors, got {hidden!r}")
            for layer in self._layers:
                hidden = plan.layer(layer, hidden)
            if not self.is_last:
                return hidden
            loss, metrics = step.loss_fn(plan.post(model, hidden, batch), batch)
        step.records.append((loss.detach(), metrics))
        # Dividing here rather than by the schedule's scale_grads also scales the parameters outside every stage
        # module. One dimension: a forward-only schedule concatenates the micro-batches' outputs.
        return torch.stack([loss / step.micro_batches])


def _passthrough_loss(loss: torch.Tensor, _target: Any) -> torch.Tensor:
    """The schedule's loss function: the last stage already returns the loss."""
    return loss


class PipelineModel(torch.nn.Module):
    """This rank's part of a pipelined model, and the schedule that trains it.

    It is the plugin's model pruned to this rank's stages, seen through another class: it shares the model's
    parameter, buffer and module tables, so every name is the one it has without PP (``blocks.7.fc1.weight``) and
    checkpoints move between PP and non-PP runs. It implements mm-core's ``StepRunner``: the trainer hands it a
    step's micro-batches (``forward_backward``) and lets it clip gradients over all stages (``clip_grad_norm_``).
    """

    def __init__(self, model: torch.nn.Module, plan: StagePlan, config: Config, runtime: Runtime) -> None:
        super().__init__()
        pp = config.parallel.pp
        self.pp_size, self.virtual = int(pp.size), int(pp.virtual_stages)
        self.schedule_name = pp.schedule
        _check_schedule(self.schedule_name, self.virtual)
        self.num_stages = self.pp_size * self.virtual
        mesh = runtime.submesh("pp")
        self.group = mesh.get_group()
        self.pp_rank = mesh.get_local_rank()
        self.last_rank = (self.num_stages - 1) % self.pp_size
        self.device = runtime.device
        self.runtime = runtime
        object.__setattr__(self, "module", model)
        object.__setattr__(self, "plan", plan)
        object.__setattr__(self, "step", None)
        self._schedules: dict[tuple[int, bool], Any] = {}

        tied = _check_coverage(model, plan)
        stack = _lookup(model, plan.layers)
        if not isinstance(stack, torch.nn.ModuleList):
            raise PluginError(f"parallel_plan pp_layers {plan.layers!r} is a {type(stack).__name__}, not a ModuleList")
        cuts = _pipeline_num_layers(pp.pipeline_num_layers, plan.num_layers)
        for name, path in plan.pre_stacks:
            check_first_stage_stack(len(_lookup(model, path)), self.pp_size, self.virtual, cuts, name, plan.name)
        self.layer_counts = stage_layer_counts(
            len(stack), self.pp_size, self.virtual, cuts, plan.name or plan.layers
        )
        ranges = stage_ranges(self.layer_counts)
        self.stages = local_stages(self.pp_rank, self.pp_size, self.virtual)
        has_first, has_last = 0 in self.stages, self.num_stages - 1 in self.stages
        # Megatron's way for tied weights: the last stage keeps its own copy under the post name (pruning leaves
        # it there), :meth:`sync_tied_weights` starts it equal to the first stage's and the two copies' gradients
        # are summed after each backward. Pipeline rank 0 runs the first stage.
        side = 0 if has_first and not has_last else 1 if has_last and not has_first else None
        self._tied = [(names[side], 0 if side else self.last_rank) for names in tied] if side is not None else []
        self._tied_is_copy = side == 1
        pre = {p: _lookup(model, p) for p in plan.pre_modules}
        post = {p: _lookup(model, p) for p in plan.post_modules}
        for path in [*(() if has_first else pre), *(() if has_last else post)]:
            _remove(model, path)
        # The copy is also registered under the first stage's name, as without PP: checkpoints (optimizer state
        # included) then name it the same on every rank and with or without PP.
        self._aliases = tied if self._tied_is_copy else []
        for pre_name, post_name in self._aliases:
            _set_parameter(model, pre_name, _lookup(model, post_name))
        parent, _, name = plan.layers.rpartition(".")
        named_modules(model)[parent]._modules[name] = StageLayers({i: stack[i] for s in self.stages for i in ranges[s]})
        # Share the pruned model's tables: one owner per tensor, the same names, no copy.
        for table in ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules"):
            object.__setattr__(self, table, getattr(model, table))
        self.chunks = [
            PipelineChunk(
                self,
                s,
                [stack[i] for i in ranges[s]],
                {
                    **(pre if s == 0 else {}),
                    plan.layers: StageLayers({i: stack[i] for i in ranges[s]}),
                    **(post if s == self.num_stages - 1 else {}),
                },
            )
            for s in self.stages
        ]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Not callable: a pipeline runs whole steps through :meth:`forward_backward`."""
        raise RuntimeError("a pipelined model runs whole steps: call forward_backward(batches, loss_fn)")

    def train(self, mode: bool = True) -> PipelineModel:
        """Set training mode on the plugin's model too (its root's flag is its own)."""
        self.module.train(mode)
        return super().train(mode)

    def unreduced_parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters whose gradients no engine averages over data-parallel ranks.

        All of them without FSDP2; with it, those in no stage module (named directly by pp_pre / pp_post).
        """
        sharded = {id(p) for chunk in self.chunks if isinstance(chunk, FSDPModule) for p in chunk.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in sharded]

    def _schedule(self, micro_batches: int, backward: bool):
        """The schedule for a step of ``micro_batches`` (one per count: stages keep per-step buffers).

        Forward-only steps of single-stage schedules use GPipe, which takes fewer micro-batches than stages.
        """
        key = (micro_batches, backward)
        if key not in self._schedules:
            name = self.schedule_name if backward or self.schedule_name == "interleaved_1f1b" else "gpipe"
            if name == "1f1b" and micro_batches < self.pp_size:
                raise ConfigError(
                    f"parallel.pp.schedule 1f1b needs at least pp.size = {self.pp_size} micro-batches "
                    f"per step, got {micro_batches}: raise training.global_batch_size or lower micro_batch_size"
                )
            stages = [
                PipelineStage(chunk, chunk.stage, self.num_stages, self.device, group=self.group)
                for chunk in self.chunks
            ]
            cls = SCHEDULES[name]
            first = stages if cls is ScheduleInterleaved1F1B else stages[0]
            self._schedules[key] = cls(first, micro_batches, loss_fn=_passthrough_loss, scale_grads=False)
        return self._schedules[key]

    def forward_backward(
        self,
        batches: list,
        loss_fn: Callable[[Any, Any], tuple[torch.Tensor, dict]],
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        backward: bool = True,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Run the schedule over ``batches`` (one per micro-batch); the summed loss and metrics, on every rank.

        Gradients end as the mean over micro-batches (and data-parallel ranks), as the trainer's own loop leaves them.
        """
        n = len(batches)
        object.__setattr__(self, "step", _Step(loss_fn, autocast, n))
        schedule = self._schedule(n, backward)
        inputs = {
            "arg_mbs": [()] * n,
            "kwarg_mbs": [{"batch": batch} for batch in batches],
            # The last stage returns the loss itself; the schedule only insists on one target per micro-batch.
            "target_mbs": [torch.zeros((), device=self.device)] * n,
        }
        if backward:
            schedule.step(**inputs, return_outputs=False)
            self._sum_tied_gradients()
            self._average_gradients()
        else:
            schedule.eval(**inputs)
        # Shape inference on a schedule's first step runs the loss once more: keep the last n.
        records = self.step.records[-n:] if self.last_rank == self.pp_rank else []
        object.__setattr__(self, "step", None)
        total = float(sum(loss for loss, _ in records)) if records else 0.0
        sums: dict[str, float] = {}
        for _, metrics in records:
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        payload = [(total, sums)]
        device = self.device if self.device.type != "cpu" else None  # nccl/hccl stage the bytes on the device
        dist.broadcast_object_list(payload, group=self.group, group_src=self.last_rank, device=device)
        total, sums = payload[0]
        return torch.tensor(total, device=self.device), sums

    def _average_gradients(self) -> None:
        """Average the gradients of :meth:`unreduced_parameters` over the data-parallel (and cp) ranks.

        One all-reduce per dtype after the schedule: DDP's reducer cannot follow a pipeline's interleaved backwards.
        """
        rt = self.runtime
        if rt.dp_size * rt.dims["cp"] == 1:
            return
        group = rt.submesh("dp_cp").get_group()
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for param in self.unreduced_parameters():
            if param.grad is not None:
                by_dtype.setdefault(param.grad.dtype, []).append(param.grad)
        for grads in by_dtype.values():
            flat = _flatten_dense_tensors(grads)
            dist.all_reduce(flat, group=group)
            flat /= dist.get_world_size(group)
            for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
                grad.copy_(averaged)

    def _tied_parameters(self) -> list[tuple[torch.nn.Parameter, int]]:
        """This rank's end of each weight tied across stages, and the pipeline rank holding the other end."""
        return [(_lookup(self.module, name), peer) for name, peer in self._tied]

    def _exchange(self, tensor: torch.Tensor, peer: int) -> torch.Tensor:
        """Send ``tensor`` to pipeline rank ``peer`` and receive its counterpart (local shards under FSDP2)."""
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        received = torch.empty_like(local)
        ops = [
            dist.P2POp(dist.isend, local, group=self.group, group_peer=peer),
            dist.P2POp(dist.irecv, received, group=self.group, group_peer=peer),
        ]
        for work in dist.batch_isend_irecv(ops):
            work.wait()
        return received

    def sync_tied_weights(self) -> None:
        """Make the last stage's copy of each tied weight equal to the first stage's (and its alias it again)."""
        for pre_name, post_name in self._aliases:  # FSDP2 and allocation replace the copy
            _set_parameter(self.module, pre_name, _lookup(self.module, post_name))
        for param, peer in self._tied_parameters():
            received = self._exchange(param.detach(), peer)
            if self._tied_is_copy:
                local = param.to_local() if isinstance(param, DTensor) else param
                with torch.no_grad():
                    local.copy_(received)

    def _sum_tied_gradients(self) -> None:
        """Sum the two copies' gradients of each tied weight, on both ends (a + b == b + a: they stay identical)."""
        for param, peer in self._tied_parameters():
            if not param.requires_grad:
                continue
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            received = self._exchange(grad, peer)
            local = grad.to_local() if isinstance(grad, DTensor) else grad
            local.add_(received)
            param.grad = grad

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip gradients to ``max_norm`` by their 2-norm over every stage; returns that norm.

        A tied weight counts once, as without PP: the last stage's copy is clipped but left out of the norm.
        FSDP2-sharded gradients and the plain ones of parameters outside every stage module (replicated over
        data-parallel ranks) are measured, and clipped, apart: torch's foreach kernels take no mix of the two.
        """
        params = [p for p in self.parameters() if p.grad is not None]
        copies = {id(p) for p, _ in self._tied_parameters()} if self._tied_is_copy else set()
        squared = torch.zeros((), device=self.device, dtype=torch.float32)
        sharded = [p for p in params if isinstance(p.grad, DTensor)]
        groups = (sharded, [p for p in params if not isinstance(p.grad, DTensor)])
        for group in groups:
            grads = [p.grad for p in group if id(p) not in copies]
            if grads:
                norm = torch.nn.utils.get_total_norm(grads)
                if isinstance(norm, DTensor):
                    norm = norm.full_tensor()
                squared += norm.to(self.device, torch.float32) ** 2
        dist.all_reduce(squared, group=self.group)
        norm = squared.sqrt()
        for group in groups:
            if group:
                torch.nn.utils.clip_grads_with_norm_(group, max_norm, norm)
        return norm


def _pipeline_num_layers(configured: Any, from_plugin: Any) -> Any:
    """``parallel.pp.pipeline_num_layers``, else the plugin's own (its model section's); both set must agree."""
    if configured is None:
        return from_plugin
    if from_plugin is not None and _plain(configured) != _plain(from_plugin):
        raise ConfigError(
            f"parallel.pp.pipeline_num_layers {_plain(configured)!r} differs from the model section's "
            f"{_plain(from_plugin)!r}; set one of them"
        )
    return configured


def _plain(value: Any) -> Any:
    """Config mappings and lists as plain dicts and lists, for comparing and printing."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def _check_schedule(schedule: str, virtual: int) -> None:
    if schedule not in SCHEDULES:
        raise ConfigError(f"parallel.pp.schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if virtual < 1:
        raise ConfigError(f"parallel.pp.virtual_stages must be at least 1, got {virtual}")
    if virtual > 1 and schedule != "interleaved_1f1b":
        raise ConfigError(
            f"parallel.pp.virtual_stages {virtual} needs parallel.pp.schedule interleaved_1f1b, not {schedule}"
        )


def _allocate(pipe: PipelineModel, device: torch.device, offload: bool) -> None:
    """Allocate a meta-built pipeline: each stage module (FSDP2-aware), then what lies outside them.

    The stage modules get their modules' ``reset_parameters`` here; the plugin's own ``init_weights`` runs after.
    """
    for chunk in pipe.chunks:
        materialize(chunk, device, offload=offload)
    for module in pipe.module.modules():
        for name, param in module._parameters.items():
            if param is not None and param.is_meta:
                empty = torch.empty_like(param, device=device)
                module._parameters[name] = torch.nn.Parameter(empty, param.requires_grad)
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_meta:
                module._buffers[name] = torch.empty_like(buffer, device=device)


def _load_pretrained(pipe: PipelineModel, source: Any) -> None:
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
    fsdp = config.parallel.fsdp2
    wrapped = [n for n, _ in resolve(model, fsdp, plan.fsdp_modules)[0]] if fsdp.enable else []
    ignored = [n for n, _ in expand(fsdp.ignored_modules, model, "parallel.fsdp2.ignored_modules")]
    pipe = PipelineModel(model, StagePlan.from_plan(plan.pipeline), config, runtime)
    if fsdp.enable:
        mesh = data_parallel_mesh(runtime)
        for chunk in pipe.chunks:
            names = set(named_modules(chunk))
            options = {
                **fsdp,
                "sub_modules_to_wrap": [n for n in wrapped if n in names],
                "ignored_modules": [n for n in ignored if n in names],
            }
            apply_fsdp2(chunk, mesh, options)
    if on_meta:
        _allocate(pipe, runtime.device, offload=fsdp.enable and fsdp.offload_to_cpu)
        init_weights(pipe.module)
        if plan.pretrained is not None:
            _load_pretrained(pipe, plan.pretrained)
    else:
        pipe.module.to(runtime.device)
    pipe.sync_tied_weights()
    if not fsdp.enable and runtime.dp_size * runtime.dims["cp"] > 1:
        # Replicas must start equal, as DDP would make them: every rank takes its data-parallel group's first.
        group = runtime.submesh("dp_cp")
        for tensor in pipe.state_dict().values():
            dist.broadcast(tensor, group=group.get_group(), group_src=0)
    return pipe
