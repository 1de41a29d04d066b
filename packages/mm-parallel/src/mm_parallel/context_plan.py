"""Context parallelism applied from a plugin's :class:`mm_core.plan.ContextParallelPlan`, as torchtitan's apply_cp.

The engine splits the sequence at the modules the plan names and gathers it at others; in between, the plugin's
attention calls ``mm_parallel.attention``. The model's forward runs in a scope (:func:`context_parallel`) in which
the split notes the sequence's true length, so attention masks the padding and the gather drops it; the backward
pass re-enters that scope, since activation checkpointing runs forwards again there. Under pipeline parallelism
each stage's part of the plan runs in the scope, and the length travels to the next stage with the carry.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch

from mm_core.config import Config
from mm_core.errors import PluginError
from mm_core.plan import Carry, ContextParallelPlan, ParallelPlan, PipelinePlan
from mm_core.runtime import Runtime
from mm_parallel.context import (
    ContextParallel,
    active_scope,
    build_context,
    context_parallel,
    reenter_in_backward,
)
from mm_parallel.patterns import named_modules
from mm_parallel.pipeline.plan import call_layer
from mm_parallel.sequence import gather_sequence, split_sequence
from mm_parallel.ulysses import check_heads

log = logging.getLogger("mm")


def _each(output: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` of a tensor, or of each tensor of a tuple."""
    return tuple(fn(t) for t in output) if isinstance(output, tuple) else fn(output)


def _in_scope(cp: ContextParallel, field: str, path: str) -> None:
    """A PluginError unless the module at ``path`` runs inside the model's forward (or a pipeline stage's)."""
    scope = active_scope()
    if scope is None or scope.cp != cp:
        raise PluginError(
            f"ContextParallelPlan.{field} {path!r} ran outside a call of the model (or of a pipeline stage), "
            "where context parallelism does not split: call the model itself"
        )


def _split_input(cp: ContextParallel, path: str, dim: int) -> Callable:
    def hook(module: torch.nn.Module, args: tuple) -> tuple:
        _in_scope(cp, "split_inputs", path)
        if not args:
            raise PluginError(f"ContextParallelPlan.split_inputs {path!r} was called without a positional input")
        return (split_sequence(args[0], dim, cp), *args[1:])

    return hook


def _split_output(cp: ContextParallel, path: str, dim: int) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        _in_scope(cp, "split_outputs", path)
        return _each(output, lambda t: split_sequence(t, dim, cp))

    return hook


def _gather_output(cp: ContextParallel, path: str, dim: int) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        _in_scope(cp, "gather_outputs", path)
        return _each(output, lambda t: gather_sequence(t, dim, cp))

    return hook


def _forward_in_scope(model: torch.nn.Module, cp: ContextParallel) -> None:
    """Run each forward of ``model`` in a scope of ``cp``, re-entered by the backward of its output."""
    open_scopes: list[ExitStack] = []

    def enter(module: torch.nn.Module, args: tuple) -> None:
        scopes = ExitStack()
        scopes.enter_context(context_parallel(cp))
        open_scopes.append(scopes)

    def leave(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        output = reenter_in_backward(output, active_scope())
        open_scopes.pop().close()
        return output

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)


def plan_modules(model: torch.nn.Module, plan: ContextParallelPlan) -> list[tuple[str, str, torch.nn.Module, int]]:
    """``(field, path, module, dim)`` of each module the plan names; a PluginError for a path that names none."""
    modules = named_modules(model)
    found = []
    for field in ("split_inputs", "split_outputs", "gather_outputs"):
        for path, dim in getattr(plan, field).items():
            if path not in modules:
                raise PluginError(f"ContextParallelPlan.{field} names {path!r}, which is no module of the model")
            found.append((field, path, modules[path], dim))
    return found


def check_plan(plan: ContextParallelPlan, options: Config) -> None:
    """A ConfigError unless ``parallel.cp`` (``options``) suits the plan: Ulysses' ranks must divide its heads."""
    ranks = {"ulysses": options.size, "usp": options.ulysses_degree}.get(options.mode)
    if plan.heads is not None and ranks:
        check_heads(plan.heads, ranks, options.mode)


def shard_model(model: torch.nn.Module, plan: ContextParallelPlan, cp: ContextParallel, pipelined: bool) -> None:
    """Split and gather ``model``'s sequence over ``cp`` at the modules ``plan`` names.

    Without pipeline parallelism the model's forward also opens the scope they run in (with it, each stage's part
    does: :func:`shard_pipeline`).
    """
    for field, path, module, dim in plan_modules(model, plan):
        if field == "split_inputs":
            module.register_forward_pre_hook(_split_input(cp, path, dim))
        else:
            module.register_forward_hook((_split_output if field == "split_outputs" else _gather_output)(cp, path, dim))
    if not pipelined:
        _forward_in_scope(model, cp)


def _marker(carry: Carry) -> tuple[torch.Tensor, ...]:
    """``carry`` as a tuple, re-entering the active scope in backward, and the scope's length appended as a marker.

    The length is the marker's size: torch's pipelining sends tensor shapes to the next stage even while it infers
    them from metadata, when the values it sends are not yet real.
    """
    scope = active_scope()
    tensors = carry if isinstance(carry, tuple) else (carry,)
    marker = torch.empty(scope.length or 0, dtype=torch.uint8, device=tensors[0].device)
    return (*reenter_in_backward(tensors, scope), marker)


def _unmark(carry: tuple[torch.Tensor, ...]) -> tuple[Carry, int | None]:
    """The plugin's carry (one tensor as itself, as the pipeline passes it) and the length of the marker at its end."""
    *tensors, marker = carry
    return tensors[0] if len(tensors) == 1 else tuple(tensors), marker.shape[0] or None


def shard_pipeline(plan: PipelinePlan, cp: ContextParallel) -> PipelinePlan:
    """``plan`` with its pre, layer and post each run in a scope of ``cp``, the sequence length passed on with the
    carry: the split (first stage) and the gather (last stage) run on different ranks."""
    layer = plan.layer or call_layer

    def pre(model: torch.nn.Module, batch: Any) -> Carry:
        with context_parallel(cp):
            return _marker(plan.pre(model, batch))

    def run_layer(block: torch.nn.Module, carry: Carry) -> Carry:
        inner, length = _unmark(carry)
        with context_parallel(cp, length):
            return _marker(layer(block, inner))

    def post(model: torch.nn.Module, carry: Carry, batch: Any) -> Any:
        inner, length = _unmark(carry)
        with context_parallel(cp, length):
            return reenter_in_backward(plan.post(model, inner, batch), active_scope())

    return dataclasses.replace(plan, pre=pre, layer=run_layer, post=post)


def apply_context_parallel(
    model: torch.nn.Module, plan: ParallelPlan, config: Config, runtime: Runtime
) -> ParallelPlan:
    """Shard ``model``'s sequence over the runtime's ``cp`` mesh dim as ``plan.cp`` says; the plan to go on with.

    Nothing when ``parallel.cp.size`` is 1. Under pipeline parallelism the returned plan's pipeline runs each stage
    in the scope. The plan's ``heads`` are checked against the ranks Ulysses splits them over (a ConfigError).
    """
    options = config.parallel.cp
    if options.size == 1:
        return plan
    if plan.cp is None:
        raise PluginError(
            f"parallel.cp.size {options.size} needs the plugin's parallel_plan to give cp "
            "(mm_core.ContextParallelPlan: where the sequence is split and gathered; see docs/context_parallel.md)"
        )
    check_plan(plan.cp, options)
    cp = build_context(runtime.submesh("cp"), options.mode, options.ulysses_degree, options.window_size)
    pipelined = config.parallel.pp.size > 1
    shard_model(model, plan.cp, cp, pipelined)
    log.info("context parallel: %s over %d ranks", cp.mode, cp.size)
    if not pipelined or plan.pipeline is None:  # no pipeline plan: the pipeline engine says so
        return plan
    return dataclasses.replace(plan, pipeline=shard_pipeline(plan.pipeline, cp))
