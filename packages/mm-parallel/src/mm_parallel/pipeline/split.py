"""Each pipeline stage as its own module: the model, holding only what the stage runs (torchtitan's split).

A stage module is the plugin's model (its class, so ``PipelinePlan.pre`` / ``post`` can call its methods) with the
other stages' layers and, away from the ends, the ``pre_modules`` / ``post_modules`` pruned to None. Its layers
stay under their original indices, so ``blocks.7.fc1.weight`` is named the same with and without PP.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence

import torch

from mm_core.errors import PluginError
from mm_parallel.patterns import named_modules
from mm_parallel.pipeline.plan import StagePlan, layer_stack

Part = torch.nn.Module | torch.Tensor
"""What a plan path names: a module, a parameter or a buffer."""


class StageLayers(torch.nn.Module):
    """The layers of a stack that one stage holds, under their original indices; iterates like a ModuleList."""

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

    @property
    def indices(self) -> list[int]:
        """The original indices of the layers held, ascending."""
        return [int(index) for index in self._modules]


def lookup(model: torch.nn.Module, path: str) -> Part:
    """The module, parameter or buffer at ``path`` (activation-checkpoint and compile wrappers add no segment)."""
    modules = named_modules(model)
    if path in modules:
        return modules[path]
    parent, _, name = path.rpartition(".")
    owner = modules.get(parent)
    tensor = None if owner is None else owner._parameters.get(name, owner._buffers.get(name))
    if tensor is None:
        raise PluginError(f"PipelinePlan names {path!r}, which is no module, parameter or buffer of the model")
    return tensor


def attach(root: torch.nn.Module, path: str, source: torch.nn.Module, source_path: str | None = None) -> None:
    """Register at ``path`` in ``root`` what ``source`` holds at ``source_path`` (default: ``path``).

    Plain containers stand in for the modules in between; a buffer keeps its persistence.
    """
    source_path = source_path or path
    part = lookup(source, source_path)
    node = root
    *parents, name = path.split(".")
    for parent in parents:
        if node._modules.get(parent) is None:
            node.add_module(parent, torch.nn.Module())
        node = node._modules[parent]
    if isinstance(part, torch.nn.Module):
        node.add_module(name, part)
    elif isinstance(part, torch.nn.Parameter):
        node.register_parameter(name, part)
    else:
        owner_path, _, owner_name = source_path.rpartition(".")
        persistent = owner_name not in named_modules(source)[owner_path]._non_persistent_buffers_set
        node.register_buffer(name, part, persistent=persistent)


def _prune(model: torch.nn.Module, path: str) -> None:
    """Set the module, parameter or buffer at ``path`` to None (nothing when a pruned module held it)."""
    parent_path, _, name = path.rpartition(".")
    parent = named_modules(model).get(parent_path)
    for slots in () if parent is None else (parent._parameters, parent._buffers, parent._modules):
        if name in slots:
            slots[name] = None


def stage_paths(plan: StagePlan, layers: Sequence[int], first: bool, last: bool) -> list[str]:
    """The paths a stage holds: the pre modules on the first, its layers, the post modules on the last."""
    return [
        *(plan.pre_modules if first else ()),
        *(f"{plan.layers}.{index}" for index in layers),
        *(plan.post_modules if last else ()),
    ]


def split_stages(
    model: torch.nn.Module, plan: StagePlan, ranges: Sequence[range], stages: Sequence[int]
) -> list[torch.nn.Module]:
    """The stage modules of ``stages`` (this rank's, ascending), each holding only what its stage runs.

    ``model`` itself, pruned, becomes the last of them; the others are copies that share their layers and ends
    with it, so no weight is copied, only the containers around them (and modules in no plan group, which hold
    no weights). Once ``model`` is pruned, each weight belongs to one stage module.
    """
    stack = layer_stack(model, plan.layers)
    ends = {path: lookup(model, path) for path in (*plan.pre_modules, *plan.post_modules)}
    last_stage = len(ranges) - 1
    split = []
    for position, stage in enumerate(stages):
        kept = set(stage_paths(plan, (), stage == 0, stage == last_stage))
        dropped = [path for path in ends if path not in kept]
        layers = StageLayers({index: stack[index] for index in ranges[stage]})
        if position < len(stages) - 1:
            # deepcopy takes what the memo maps an object to: kept parts themselves, None for dropped ones.
            memo: dict[int, object] = {id(ends[path]): None for path in dropped}
            memo.update({id(ends[path]): ends[path] for path in kept})
            memo[id(stack)] = layers
            module = copy.deepcopy(model, memo)
        else:
            module = model
            parent, _, name = plan.layers.rpartition(".")
            named_modules(model)[parent].register_module(name, layers)
        for path in dropped:  # also where a dropped part is a kept one under another path
            _prune(module, path)
        split.append(module)
    return split
