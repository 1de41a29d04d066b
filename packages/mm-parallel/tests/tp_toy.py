"""Stacked on mm_core.testing.toy for the TP engine tests: the blocks' MLPs split column- then row-wise.

Under sequence parallelism the tokens are split after ``embed`` and ``cond`` and gathered after the last block;
the blocks' norms meet the shards. With context parallelism the sequence is split after ``encoder`` and
gathered after ``head`` (as cp_toy's plan), TP's split nesting inside.
"""

from __future__ import annotations

import dataclasses

from mm_core import ContextParallelPlan, ParallelPlan, TensorParallelPlan, hookimpl
from mm_core.testing import toy


@hookimpl
def parallel_plan(model, config):
    plan: ParallelPlan = toy.parallel_plan(model=model, config=config)
    tp = TensorParallelPlan(
        layout={"blocks.{*}.fc1": "colwise", "blocks.{*}.fc2": "rowwise"},
        sequence_parallel=["blocks.{*}.norm"],
        split_outputs={"embed": 1, "cond": 1},
        gather_outputs={f"blocks.{len(model.blocks) - 1}": 1},
    )
    cp = ContextParallelPlan(split_outputs={"encoder": 1}, gather_outputs={"head": 1})
    return dataclasses.replace(plan, tp=tp, cp=cp)
