"""Weights tied between the first and the last pipeline stage (an LLM's input embedding and output head).

Megatron's way: the last stage keeps its own copy under the post name; :meth:`TiedWeights.sync` starts it equal to
the first stage's, and after each backward :meth:`TiedWeights.sum_gradients` adds the two ends' gradients on both,
so that they stay equal. Pipeline rank 0 runs the first stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from mm_parallel.pipeline.chunk import PipelineChunk
from mm_parallel.pipeline.split import lookup


@dataclass
class TiedWeights:
    """This rank's end of each tied weight and the pipeline rank holding the other end."""

    pairs: list[tuple[str, str]]
    """``(first stage name, last stage name)`` of each weight this rank holds an end of."""
    params: list[torch.nn.Parameter]
    """This rank's end of each pair."""
    peer: int
    """The pipeline rank holding the other ends."""
    is_copy: bool
    """Whether this rank holds the last stage's copies (which sync overwrites)."""
    group: dist.ProcessGroup | None

    @classmethod
    def find(
        cls, pairs: Sequence[tuple[str, str]], chunks: Sequence[PipelineChunk], last_rank: int, group: dist.ProcessGroup
    ) -> TiedWeights:
        """The ends that ``chunks`` (this rank's stages, placed and sharded) hold of the tied ``pairs``."""
        if chunks[0].is_first:
            return cls(list(pairs), [lookup(chunks[0].model, pre) for pre, _ in pairs], last_rank, False, group)
        if chunks[-1].is_last:
            return cls(list(pairs), [lookup(chunks[-1].model, post) for _, post in pairs], 0, True, group)
        return cls([], [], 0, False, group)

    def aliases(self) -> dict[str, str]:
        """First stage name -> last stage name of the copies this rank holds: it names them as the first stage.

        Checkpoints (optimizer state included) then name a tied weight the same on every rank, with or without PP.
        """
        return {pre: post for pre, post in self.pairs} if self.is_copy else {}

    def copies(self) -> list[torch.nn.Parameter]:
        """The copies this rank holds, which a gradient norm leaves out (the first stage counts each weight once)."""
        return self.params if self.is_copy else []

    def _exchange(self, tensor: torch.Tensor) -> torch.Tensor:
        """Send ``tensor`` to the peer and receive its counterpart (local shards under FSDP2)."""
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        received = torch.empty_like(local)
        ops = [
            dist.P2POp(dist.isend, local, group=self.group, group_peer=self.peer),
            dist.P2POp(dist.irecv, received, group=self.group, group_peer=self.peer),
        ]
        for work in dist.batch_isend_irecv(ops):
            work.wait()
        return received

    def sync(self) -> None:
        """Make the last stage's copy of each tied weight equal to the first stage's."""
        for param in self.params:
            received = self._exchange(param.detach())
            if self.is_copy:
                local = param.to_local() if isinstance(param, DTensor) else param
                with torch.no_grad():
                    local.copy_(received)

    def sum_gradients(self) -> None:
        """Sum the two ends' gradients of each tied weight, on both (a + b == b + a: they stay identical)."""
        for param in self.params:
            if not param.requires_grad:
                continue
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            if isinstance(grad, DTensor) and grad.placements != param.placements:
                # TP: a vocabulary-split embedding's gradient comes back replicated; the other end's is split.
                grad = grad.redistribute(param.device_mesh, param.placements)
            received = self._exchange(grad)
            local = grad.to_local() if isinstance(grad, DTensor) else grad
            local.add_(received)
            param.grad = grad
