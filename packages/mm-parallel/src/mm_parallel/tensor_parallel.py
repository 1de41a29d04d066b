"""Tensor (and sequence) parallelism from a plugin's :class:`mm_core.plan.TensorParallelPlan`, on the mesh's ``tp`` dim.

Built on ``torch.distributed.tensor.parallel`` as torchtitan's apply_tp: column- and row-wise linears
(``ColwiseParallel`` / ``RowwiseParallel``), their inputs and outputs local tensors. Every other trainable parameter
becomes a replicated DTensor on the same mesh, so that the optimizer, gradient clipping, FSDP2 (on the 2-D mesh
``dp × tp``) and DCP see one kind of parameter; the module holding it computes with its local value, and with
sequence parallelism a parameter that meets the sequence shards gets its gradient summed over tp.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

from mm_core.config import Config
from mm_core.errors import ConfigError, PluginError
from mm_core.plan import ParallelPlan, TensorParallelPlan
from mm_core.runtime import Runtime
from mm_parallel.patterns import compile_pattern, expand, named_modules
from mm_parallel.tp_ops import gather_sequence_tp, sharded_rms_norm, split_sequence_tp, sum_grad_over

log = logging.getLogger("mm")


def _styles(style: str, sp: bool, seq: int) -> ParallelStyle | None:
    """The torch ParallelStyle of a layout style (None: the engine handles it itself)."""
    tokens = Shard(seq) if sp else Replicate()
    return {
        "colwise": lambda: ColwiseParallel(input_layouts=tokens),
        "colwise_replicated": lambda: ColwiseParallel(input_layouts=Replicate()),
        "rowwise": lambda: RowwiseParallel(output_layouts=tokens),
        "vocab_embedding": lambda: RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
        "vocab_parallel": lambda: ColwiseParallel(
            input_layouts=Replicate(), output_layouts=Shard(-1), use_local_output=False
        ),
    }.get(style, lambda: None)()


def check_plan(plan: TensorParallelPlan, config: Config) -> None:
    """A ConfigError unless the tp size (× the Ulysses ranks of context parallelism) divides the plan's heads."""
    tp, cp = config.parallel.tp.size, config.parallel.cp
    ulysses = {"ulysses": cp.size, "usp": cp.ulysses_degree}.get(cp.mode) or 1
    for name, heads in (("attention heads", plan.heads), ("key/value heads", plan.kv_heads)):
        if heads is None:
            continue
        if heads % tp:
            raise ConfigError(
                f"parallel.tp.size {tp} does not divide the model's {heads} {name}: pick a tp size dividing {heads}"
            )
        if ulysses > 1 and name == "attention heads" and (heads // tp) % ulysses:
            raise ConfigError(
                f"parallel.tp.size × Ulysses ranks = {tp} × {ulysses} do not divide the model's {heads} {name}: "
                "each tp rank's heads are split again over the cp ranks"
            )


def _divide_attributes(model: torch.nn.Module, plan: TensorParallelPlan, tp: int) -> None:
    """Divide the attributes ``plan.divide`` names (heads counts) by ``tp``, which must divide each."""
    for pattern, names in plan.divide.items():
        for path, module in expand([pattern], model, "TensorParallelPlan.divide"):
            for name in names:
                value = getattr(module, name, None)
                if not isinstance(value, int):
                    raise PluginError(f"TensorParallelPlan.divide: {path}.{name} is no integer attribute")
                if value % tp:
                    raise ConfigError(
                        f"parallel.tp.size {tp} does not divide {path}.{name} = {value}: pick a tp size dividing it"
                    )
                setattr(module, name, value // tp)


LOCAL = "_mm_tp_local"
"""Attribute of a module holding DTensor parameters it computes with locally: name -> the group its gradient is
summed over (None: not summed). A module attribute, so it survives FSDP2's parameter swaps and stage copies."""


@contextlib.contextmanager
def local_parameters(root: torch.nn.Module, recurse: bool = True) -> Iterator[None]:
    """Within it, the modules under ``root`` (``root`` alone without ``recurse``) hold the local values of their
    replicated DTensor parameters, for code that reads them directly (``model.table + x``)."""
    saved = []
    for module in root.modules() if recurse else (root,):
        for name, group in getattr(module, LOCAL, {}).items():
            param = module._parameters.get(name)
            if isinstance(param, DTensor):
                saved.append((module, name, param))
                local = param.to_local()
                module._parameters[name] = local if group is None else sum_grad_over(local, group)
    try:
        yield
    finally:
        for module, name, param in reversed(saved):
            module._parameters[name] = param


def _use_local_parameters(module: torch.nn.Module, names: dict[str, Any], recurse: bool = False) -> None:
    """Run ``module``'s forward with the local values of its DTensor parameters ``names`` (name -> group their
    gradients are summed over, or None). The forward itself is wrapped, inside any hook (FSDP2's all-gather runs
    first)."""
    setattr(module, LOCAL, {**getattr(module, LOCAL, {}), **names})
    forward = module.forward

    @functools.wraps(forward)
    def local_forward(*args: Any, **kwargs: Any) -> Any:
        with local_parameters(module, recurse):
            return forward(*args, **kwargs)

    module.forward = local_forward


def _shard_norm(path: str, module: torch.nn.Module, mesh: DeviceMesh) -> None:
    """An ``nn.RMSNorm`` over features split across tp: its weight a Shard(0) DTensor, its statistics summed."""
    if not isinstance(module, torch.nn.RMSNorm) or len(module.normalized_shape) != 1:
        raise PluginError(f"TensorParallelPlan.layout: {path} is {type(module).__name__}; sharded_norm takes an "
                          "nn.RMSNorm over the last dim")
    features = module.normalized_shape[0]
    if features % mesh.size():
        raise ConfigError(f"parallel.tp.size {mesh.size()} does not divide the {features} features of {path}")
    if module.weight is not None:
        module.weight = torch.nn.Parameter(_distribute(module.weight, mesh, Shard(0)), module.weight.requires_grad)
    group = mesh.get_group()
    module.forward = lambda x: sharded_rms_norm(x, module.weight, features, module.eps, group)


def _distribute(tensor: torch.Tensor, mesh: DeviceMesh, placement) -> DTensor:
    if tensor.is_meta:
        local = tensor.chunk(mesh.size(), dim=placement.dim)[mesh.get_local_rank()] if isinstance(
            placement, Shard) else tensor
        return DTensor.from_local(local, mesh, [placement], run_check=False)
    return distribute_tensor(tensor.detach(), mesh, [placement])


def _matches(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    regexes = [compile_pattern(p, "TensorParallelPlan.sequence_parallel") for p in patterns]
    return lambda name: any(r.match(name) for r in regexes)


def _owners(model: torch.nn.Module) -> dict[int, list[tuple[str, torch.nn.Module, str]]]:
    """Every parameter's (module path, module, attribute) holders, by parameter id: a tied weight has several."""
    owners: dict[int, list[tuple[str, torch.nn.Module, str]]] = {}
    for path, module in named_modules(model).items():
        for name, param in module._parameters.items():
            if param is not None:
                owners.setdefault(id(param), []).append((path, module, name))
    return owners


def _retie(before: dict[int, list[tuple[str, torch.nn.Module, str]]]) -> None:
    """Make each weight that was tied before the styles ran one parameter again (they must split it alike)."""
    for holders in before.values():
        if len(holders) < 2:
            continue
        params = [module._parameters[name] for _, module, name in holders]
        split = [p for p in params if isinstance(p, DTensor)]
        if not split:
            continue
        kept = split[0]
        if any(p.placements != kept.placements for p in split) or len(split) < len(params):
            paths = ", ".join(f"{path}.{name}" for path, _, name in holders)
            raise PluginError(f"TensorParallelPlan.layout splits the tied weight {paths} differently: give its "
                              "modules styles that split it alike (vocab_embedding and vocab_parallel)")
        for _, module, name in holders:
            module._parameters[name] = kept


def _replicate_the_rest(model: torch.nn.Module, plan: TensorParallelPlan, mesh: DeviceMesh, sp: bool,
                        handled: set[str]) -> int:
    """Every trainable parameter no style split becomes a replicated DTensor, used locally by its module; under
    sequence parallelism those ``plan.sequence_parallel`` names get their gradients summed over tp, and those
    ``plan.per_head`` names always."""
    meets_shards, per_head = _matches(plan.sequence_parallel), _matches(plan.per_head)
    replicated: dict[int, torch.nn.Parameter] = {}
    count = 0
    for path, module in named_modules(model).items():
        if path in handled:
            continue
        names: dict[str, bool] = {}
        for name, param in list(module._parameters.items()):
            if param is None or not param.requires_grad:
                continue
            full = f"{path}.{name}" if path else name
            if not isinstance(param, DTensor):
                if id(param) not in replicated:
                    replicated[id(param)] = torch.nn.Parameter(_distribute(param, mesh, Replicate()))
                    count += 1
                module._parameters[name] = replicated[id(param)]
            summed = (sp and (meets_shards(path) or meets_shards(full))) or per_head(path) or per_head(full)
            names[name] = mesh.get_group() if summed else None
        if names:
            _use_local_parameters(module, names)
    return count


def _sequence_inputs(model: torch.nn.Module, plan: TensorParallelPlan, group) -> None:
    """Sum over tp the gradients of the positional inputs ``plan.sequence_inputs`` names (they meet the shards)."""
    for pattern, indices in plan.sequence_inputs.items():
        for path, module in expand([pattern], model, "TensorParallelPlan.sequence_inputs"):

            def hook(module: torch.nn.Module, args: tuple, indices=tuple(indices), path=path) -> tuple:
                if max(indices) >= len(args):
                    raise PluginError(f"TensorParallelPlan.sequence_inputs: {path} got {len(args)} positional "
                                      f"inputs, the plan names input {max(indices)}")
                return tuple(sum_grad_over(a, group) if i in indices else a for i, a in enumerate(args))

            module.register_forward_pre_hook(hook)


def _check_paths(model: torch.nn.Module, plan: TensorParallelPlan) -> dict[str, torch.nn.Module]:
    modules = named_modules(model)
    for field in ("split_inputs", "split_outputs", "gather_outputs"):
        for path in getattr(plan, field):
            if path not in modules:
                raise PluginError(f"TensorParallelPlan.{field} names {path!r}, which is no module of the model")
    return modules


def shard_sequence(model: torch.nn.Module, plan: TensorParallelPlan, mesh: DeviceMesh) -> None:
    """Split the sequence over tp where the plan says and gather it where it says (sequence parallelism).

    Installed after context parallelism's hooks: a module both split runs CP's split first and TP's inside it, and
    TP's gather (prepended) before CP's.
    """
    modules = _check_paths(model, plan)
    for path, dim in plan.split_inputs.items():
        modules[path].register_forward_pre_hook(
            lambda module, args, dim=dim: (split_sequence_tp(args[0], dim, mesh), *args[1:])
        )
    for field, fn, prepend in (("split_outputs", split_sequence_tp, False), ("gather_outputs", gather_sequence_tp,
                                                                             True)):
        for path, dim in getattr(plan, field).items():

            def hook(module: torch.nn.Module, args: tuple, output: Any, dim=dim, fn=fn) -> Any:
                if isinstance(output, tuple):
                    return tuple(fn(t, dim, mesh) for t in output)
                return fn(output, dim, mesh)

            modules[path].register_forward_hook(hook, prepend=prepend)


def apply_tensor_parallel(model: torch.nn.Module, plan: ParallelPlan, config: Config, runtime: Runtime) -> bool:
    """Split ``model``'s layers over the runtime's ``tp`` mesh dim as ``plan.tp`` says; True if it did.

    Nothing when ``parallel.tp.size`` is 1. The sequence hooks of sequence parallelism are left to
    :func:`shard_sequence`, after context parallelism.
    """
    options = config.parallel.tp
    if options.size == 1:
        return False
    if plan.tp is None:
        raise PluginError(
            f"parallel.tp.size {options.size} needs the plugin's parallel_plan to give tp (mm_core.TensorParallelPlan: "
            "which linears are split column- and row-wise; see docs/tensor_parallel.md)"
        )
    fsdp = config.parallel.fsdp2
    if runtime.dp_size * runtime.dims["cp"] > 1 and not fsdp.enable and config.parallel.pp.size == 1:
        raise ConfigError(
            "parallel.tp with data or context parallelism needs parallel.fsdp2.enable: true "
            "(DDP does not take tensor-parallel parameters)"
        )
    tp_plan, mesh, sp = plan.tp, runtime.submesh("tp"), bool(options.sequence_parallel)
    if sp and not (tp_plan.split_inputs or tp_plan.split_outputs):
        raise PluginError("parallel.tp.sequence_parallel needs the TensorParallelPlan's split_inputs or "
                          "split_outputs: where the sequence is split over the tp ranks")
    check_plan(tp_plan, config)
    _check_paths(model, tp_plan)
    tied = _owners(model)
    handled: set[str] = set()
    for pattern, style in tp_plan.layout.items():
        for path, module in expand([pattern], model, "TensorParallelPlan.layout"):
            handled.add(path)
            if style == "sharded_norm":
                _shard_norm(path, module, mesh)
                continue
            kind = torch.nn.Embedding if style == "vocab_embedding" else torch.nn.Linear
            if not isinstance(module, kind):
                raise PluginError(f"TensorParallelPlan.layout: {path} is {type(module).__name__}; "
                                  f"{style} takes an nn.{kind.__name__}")
            parallelize_module(module, mesh, _styles(style, sp, tp_plan.sequence_dim))
    _retie(tied)
    for path in handled:
        module = named_modules(model)[path]
        if isinstance(getattr(module, "weight", None), DTensor) and isinstance(module, torch.nn.RMSNorm):
            _use_local_parameters(module, {"weight": None})
    replicated = _replicate_the_rest(model, tp_plan, mesh, sp, handled)
    # Code of the model may read a parameter of a module whose forward it does not call (wan's predict reads
    # predictor.scale_shift_table): the whole forward sees local values.
    _use_local_parameters(model, {}, recurse=True)
    if sp:
        _sequence_inputs(model, tp_plan, mesh.get_group())
    _divide_attributes(model, tp_plan, options.size)
    log.info("tensor parallel over %d ranks%s: %d modules split, %d parameters replicated", options.size,
             " with sequence parallelism" if sp else "", len(handled), replicated)
    return True
