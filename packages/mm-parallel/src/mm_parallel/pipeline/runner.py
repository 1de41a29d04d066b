"""The pipelined model the trainer sees (mm-core's ``StepRunner``): one step's micro-batches through a schedule."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
from torch.distributed.tensor import DTensor

from mm_core.errors import ConfigError
from mm_core.runtime import Runtime
from mm_parallel.pipeline.chunk import PipelineChunk, Step
from mm_parallel.pipeline.split import attach
from mm_parallel.pipeline.tied import TiedWeights

SCHEDULES = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe, "interleaved_1f1b": ScheduleInterleaved1F1B}


def check_schedule(schedule: str, virtual: int) -> None:
    """A ConfigError unless ``parallel.pp.schedule`` is known and fits ``virtual_stages``."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"parallel.pp.schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if virtual < 1:
        raise ConfigError(f"parallel.pp.virtual_stages must be at least 1, got {virtual}")
    if virtual > 1 and schedule != "interleaved_1f1b":
        raise ConfigError(
            f"parallel.pp.virtual_stages {virtual} needs parallel.pp.schedule interleaved_1f1b, not {schedule}"
        )


def _passthrough_loss(loss: torch.Tensor, _target: Any) -> torch.Tensor:
    """The schedule's loss function: the last stage already returns the loss."""
    return loss


class PipelineModel(torch.nn.Module):
    """This rank's part of a pipelined model, under the names it has without PP, and the schedule that trains it.

    It registers what this rank's stages hold at their paths in the plugin's model (``blocks.7.fc1.weight``), so
    its ``named_parameters`` and ``state_dict`` name every weight as without PP and checkpoints move between PP
    and non-PP runs. The stages themselves are :class:`PipelineChunk` s, outside its module tree. It implements
    mm-core's ``StepRunner``: the trainer hands it a step's micro-batches (:meth:`forward_backward`) and lets it clip
    gradients over all stages (:meth:`clip_grad_norm_`).

    Built once the stages are placed and sharded: the tensors it registers are those the stages hold at rest.
    """

    def __init__(
        self, chunks: Sequence[PipelineChunk], tied: TiedWeights, schedule: str, pp_size: int, runtime: Runtime
    ) -> None:
        super().__init__()
        self.chunks = list(chunks)  # a plain list: the chunk prefix ``model.`` is no part of the names
        self.tied = tied
        self.schedule_name = schedule
        self.pp_size = pp_size
        self.num_stages = pp_size * len(chunks)
        self.last_rank = (self.num_stages - 1) % pp_size
        mesh = runtime.submesh("pp")
        self.group = mesh.get_group()
        self.pp_rank = mesh.get_local_rank()
        self.device = runtime.device
        self.runtime = runtime
        self._schedules: dict[tuple[int, bool], Any] = {}
        # The aliases first: a tied copy is then named as the first stage names it (named_parameters keeps the first).
        for path, source_path in tied.aliases().items():
            attach(self, path, chunks[-1].model, source_path)
        for chunk in chunks:
            for path in chunk.paths():
                attach(self, path, chunk.model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Not callable: a pipeline runs whole steps through :meth:`forward_backward`."""
        raise RuntimeError("a pipelined model runs whole steps: call forward_backward(batches, loss_fn)")

    def train(self, mode: bool = True) -> PipelineModel:
        """Set training mode on the stages too (their stage modules' roots and containers are not registered here)."""
        for chunk in self.chunks:
            chunk.train(mode)
        # Not super().train(): it would reach the attached modules past their own train() (frozen encoders
        # stay in eval mode; the chunks above already set each module's mode).
        self.training = mode
        return self

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
        step = Step(loss_fn, autocast, n)
        for chunk in self.chunks:
            chunk.step = step
        schedule = self._schedule(n, backward)
        inputs = {
            "arg_mbs": [()] * n,
            "kwarg_mbs": [{"batch": batch} for batch in batches],
            # The last stage returns the loss itself; the schedule only insists on one target per micro-batch.
            "target_mbs": [torch.zeros((), device=self.device)] * n,
        }
        try:
            if backward:
                schedule.step(**inputs, return_outputs=False)
                self.tied.sum_gradients()
                self._average_gradients()
            else:
                schedule.eval(**inputs)
        finally:
            for chunk in self.chunks:
                chunk.step = None
        # Shape inference on a schedule's first step runs the loss once more: keep the last n.
        records = step.records[-n:] if self.last_rank == self.pp_rank else []
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
        """Average over the data-parallel (and cp) ranks the gradients that FSDP2 does not shard (all without it).

        One all-reduce per dtype after the schedule: DDP's reducer cannot follow a pipeline's interleaved backwards.
        """
        rt = self.runtime
        if rt.dp_size * rt.dims["cp"] == 1:
            return
        group = rt.submesh("dp_cp").get_group()
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for param in self.parameters():
            if param.grad is not None and not isinstance(param, DTensor):
                by_dtype.setdefault(param.grad.dtype, []).append(param.grad)
        for grads in by_dtype.values():
            flat = _flatten_dense_tensors(grads)
            dist.all_reduce(flat, group=group)
            flat /= dist.get_world_size(group)
            for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
                grad.copy_(averaged)

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip gradients to ``max_norm`` by their 2-norm over every stage; returns that norm.

        A tied weight counts once, as without PP: the last stage's copy is clipped but left out of the norm.
        """
        params = [p for p in self.parameters() if p.grad is not None]
        copies = {id(p) for p in self.tied.copies()}
        grads = [p.grad for p in params if id(p) not in copies]
        squared = torch.zeros((), device=self.device, dtype=torch.float32)
        if grads:
            norm = torch.nn.utils.get_total_norm(grads)
            if isinstance(norm, DTensor):
                norm = norm.full_tensor()
            squared += norm.to(self.device, torch.float32) ** 2
        dist.all_reduce(squared, group=self.group)
        norm = squared.sqrt()
        if params:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm
