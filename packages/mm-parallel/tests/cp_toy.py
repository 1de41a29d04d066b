"""Stacked on mm_core.testing.toy for the CP engine tests: the toy's attention runs through mm_parallel.attention.

``model.split``: ``plan`` (the engine splits after ``encoder`` and gathers after ``head``, as the
ContextParallelPlan says), ``forward`` (the forward splits and gathers itself, in the scope the engine opens) or
``forgotten`` (the forward gathers but never splits: a plugin author's mistake).
"""

from __future__ import annotations

import dataclasses

import torch

from mm_core import ContextParallelPlan, ParallelPlan, hookimpl
from mm_core.testing import toy
from mm_parallel import attention, gather_sequence, split_sequence


class SplitInForward(toy.ToyModel):
    """The toy whose forward shards its input's sequence and gathers its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gather_sequence(super().forward(split_sequence(x, dim=1)), dim=1)


class SplitForgotten(toy.ToyModel):
    """The toy whose forward gathers an output it never split."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gather_sequence(super().forward(x), dim=1)


MODELS = {"plan": toy.ToyModel, "forward": SplitInForward, "forgotten": SplitForgotten}


@hookimpl
def default_config(task):
    return {"model": {"split": "plan"}}


@hookimpl
def model_provider(config, runtime):
    return toy.build(config.model, MODELS[config.model.split], attention)


@hookimpl
def parallel_plan(model, config):
    heads = config.model.heads
    if config.model.split != "plan":
        cp = ContextParallelPlan(heads=heads)
    else:
        cp = ContextParallelPlan(split_outputs={"encoder": 1}, gather_outputs={"head": 1}, heads=heads)
    plan: ParallelPlan = toy.parallel_plan(model=model, config=config)
    return dataclasses.replace(plan, cp=cp)
