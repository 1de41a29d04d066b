"""One pipeline stage as the module torch's ``PipelineStage`` runs: pre (first stage), layers, post and loss (last)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mm_core.errors import PluginError
from mm_core.plan import Carry
from mm_parallel.pipeline.plan import StagePlan
from mm_parallel.pipeline.split import lookup, stage_paths
from mm_parallel.tensor_parallel import local_parameters


@dataclass
class Step:
    """What the stages need while a schedule runs: the trainer's loss and autocast, and the losses so far."""

    loss_fn: Callable[[Any, Any], tuple[torch.Tensor, dict]]
    autocast: Callable[[], contextlib.AbstractContextManager]
    micro_batches: int
    records: list[tuple[torch.Tensor, dict]] = field(default_factory=list)


class PipelineChunk(torch.nn.Module):
    """Stage ``stage`` of ``num_stages``: its stage module (``model``, from :func:`split_stages`) and how it runs.

    It is the unit that FSDP2 shards as one root and that a ``PipelineStage`` drives; the stage module's paths
    appear in it under ``model.``.
    """

    def __init__(self, model: torch.nn.Module, plan: StagePlan, stage: int, num_stages: int) -> None:
        super().__init__()
        self.model = model
        self.plan = plan
        self.stage = stage
        self.is_first = stage == 0
        self.is_last = stage == num_stages - 1
        stack = lookup(model, plan.layers)
        self.layer_indices = stack.indices
        self.layers = tuple(stack)  # a plain attribute: the layers are registered once, through ``model``
        self.step: Step | None = None

    def paths(self) -> list[str]:
        """The paths of what this stage holds, as the plugin's model names them."""
        return stage_paths(self.plan, self.layer_indices, self.is_first, self.is_last)

    def forward(self, *carry: torch.Tensor, batch: Any = None) -> Carry:
        """Run this stage on one micro-batch; the last stage returns the loss, divided by the micro-batch count."""
        step, plan = self.step, self.plan
        # Under TP, pre and post may read replicated parameters directly (the stage's model forward never runs).
        with step.autocast(), local_parameters(self.model):
            hidden: Any = plan.pre(self.model, batch) if self.is_first else (carry[0] if len(carry) == 1 else carry)
            if not isinstance(hidden, torch.Tensor) and not (
                isinstance(hidden, tuple) and all(isinstance(t, torch.Tensor) for t in hidden)
            ):
                raise PluginError(f"PipelinePlan.pre must return a tensor or a tuple of tensors, got {hidden!r}")
            for layer in self.layers:
                hidden = plan.layer(layer, hidden)
            if not self.is_last:
                return hidden
            loss, metrics = step.loss_fn(plan.post(self.model, hidden, batch), batch)
        step.records.append((loss.detach(), metrics))
        # Dividing here rather than by the schedule's scale_grads keeps the loss the trainer's mean. One dimension:
        # a forward-only schedule concatenates the micro-batches' outputs.
        return torch.stack([loss / step.micro_batches])
