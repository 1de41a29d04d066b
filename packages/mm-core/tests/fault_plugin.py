"""Stacked on the toy: rank ``model.fault_rank`` sends itself signal ``model.fault`` during step ``model.fault_step``
(on the workers' first start only, when torchrun restarts them)."""

from __future__ import annotations

import os
import signal

from mm_core import hookimpl
from mm_core.preemption import restart_count
from mm_core.testing import toy

_calls: list[None] = []


@hookimpl
def default_config(task: str) -> dict:
    return {"model": {"fault": "SIGTERM", "fault_step": 3, "fault_rank": 0}}


@hookimpl
def loss_func(output, batch, runtime):
    training = runtime.config.training
    per_step = training.global_batch_size // (training.micro_batch_size * runtime.dp_size)
    _calls.append(None)
    model = runtime.config.model
    if (len(_calls) - 1) // per_step + 1 == model.fault_step and runtime.rank == model.fault_rank \
            and len(_calls) % per_step == 1 % per_step and not restart_count():
        os.kill(os.getpid(), getattr(signal, model.fault))
    return toy.loss_func(output=output, batch=batch, runtime=runtime)
