"""A plugin's :class:`mm_core.plan.PipelinePlan` resolved for cutting: the cut stack, the ends, the cuts, coverage."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mm_core.errors import ConfigError, PluginError
from mm_core.plan import Carry, PipelinePlan
from mm_parallel.patterns import clean_name, named_modules
from mm_parallel.pipeline.layout import check_first_stage_stack, stage_layer_counts, stage_ranges


def call_layer(layer: torch.nn.Module, carry: Carry) -> Carry:
    """The default ``PipelinePlan.layer``: ``layer(hidden)``, or ``(layer(hidden, *extras), *extras)`` for a tuple."""
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
        pre_modules += tuple(path for _, path in pre_stacks if _group(path, {"pre": pre_modules}) is None)
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


def _group(path: str, groups: Mapping[str, Sequence[str]]) -> str | None:
    """Which group (layers, pre_modules, post_modules) a parameter or buffer path falls under."""
    for group, prefixes in groups.items():
        if any(path == p or path.startswith(p + ".") for p in prefixes):
            return group
    return None


def check_coverage(model: torch.nn.Module, plan: StagePlan) -> list[tuple[str, str]]:
    """Check that every parameter and persistent buffer belongs to exactly one of layers / pre / post modules.

    Returns the weights tied between the two ends (an LLM's input embedding and output projection) as
    ``(pre_modules name, post_modules name)`` pairs; any other weight shared between groups is a PluginError.
    """
    groups = {"layers": [plan.layers], "pre_modules": plan.pre_modules, "post_modules": plan.post_modules}
    seen: dict[int, tuple[str, str]] = {}
    tied: list[tuple[str, str]] = []
    for name, param in model.named_parameters(remove_duplicate=False):
        name = clean_name(name)
        group = _group(name, groups)
        if group is None:
            raise PluginError(
                f"parameter {name!r} is in none of PipelinePlan.layers ({plan.layers!r}), PipelinePlan.pre_modules "
                f"{list(plan.pre_modules)} or PipelinePlan.post_modules {list(plan.post_modules)}; name its module "
                "in one"
            )
        first = seen.setdefault(id(param), (name, group))
        if first[1] == group:
            continue
        if {first[1], group} != {"pre_modules", "post_modules"}:
            raise PluginError(
                f"parameter {name!r} (PipelinePlan.{group}) is tied to {first[0]!r} (PipelinePlan.{first[1]}): only "
                "weights shared between PipelinePlan.pre_modules and PipelinePlan.post_modules can be tied across "
                "pipeline stages; untie them"
            )
        pair = (first[0], name) if first[1] == "pre_modules" else (name, first[0])
        if pair not in tied:
            tied.append(pair)
    persistent = set(model.state_dict(keep_vars=True))
    for name, _ in model.named_buffers():
        if name in persistent and _group(clean_name(name), groups) is None:
            raise PluginError(
                f"buffer {clean_name(name)!r} is saved in checkpoints but is in none of PipelinePlan.layers, "
                "pre_modules or post_modules; name its module in one"
            )
    return tied


def layer_stack(model: torch.nn.Module, path: str) -> torch.nn.ModuleList:
    """The ``nn.ModuleList`` at ``path``, or a PluginError naming the plan's field."""
    stack = named_modules(model).get(path)
    if stack is None:
        raise PluginError(f"PipelinePlan.layers names {path!r}, which is no module of the model")
    if not isinstance(stack, torch.nn.ModuleList):
        raise PluginError(f"PipelinePlan.layers {path!r} is a {type(stack).__name__}, not an nn.ModuleList")
    return stack


def layer_ranges(model: torch.nn.Module, plan: StagePlan, pp: int, virtual: int, configured: Any) -> list[range]:
    """The indices of the cut stack's layers on each of the ``pp × virtual`` stages, in stage order.

    ``configured`` is ``parallel.pp.pipeline_num_layers``; the stacks before the cut one must stay whole on the
    first stage.
    """
    cuts = pipeline_num_layers(configured, plan.num_layers)
    for name, path in plan.pre_stacks:
        check_first_stage_stack(len(layer_stack(model, path)), pp, virtual, cuts, name, plan.name)
    counts = stage_layer_counts(len(layer_stack(model, plan.layers)), pp, virtual, cuts, plan.name or plan.layers)
    return stage_ranges(counts)


def pipeline_num_layers(configured: Any, from_plugin: Any) -> Any:
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
