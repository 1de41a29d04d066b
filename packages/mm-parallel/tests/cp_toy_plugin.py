"""A toy sequence plugin whose attention runs through mm_parallel.attention, for the CP engine tests.

``model.split``: ``plan`` (the engine splits after ``inp`` and gathers after ``out``, as its ContextParallelPlan
says) or ``forward`` (the forward splits and gathers itself, in the scope the engine opens).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from mm_core import ContextParallelPlan, ParallelPlan, hookimpl
from mm_parallel import attention, gather_sequence, split_sequence

HEADS = 4


class SeqModel(torch.nn.Module):
    def __init__(self, split_in_forward: bool, dim: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.split_in_forward = split_in_forward
        self.inp = torch.nn.Linear(4, dim)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(dim, 3 * dim) for _ in range(layers))
        self.out = torch.nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        if self.split_in_forward:
            h = split_sequence(h, dim=1)
        for block in self.blocks:
            q, k, v = block(h).unflatten(-1, (3, HEADS, -1)).unbind(2)
            h = h + attention(q, k, v, causal=True).flatten(2)
        out = self.out(h)
        return gather_sequence(out, dim=1) if self.split_in_forward else out


@hookimpl
def default_config(task):
    return {"model": {"seq_len": 13, "split": "plan"}, "data": {"num_samples": 32},
            "training": {"train_iters": 4, "global_batch_size": 4, "micro_batch_size": 1, "lr": 1e-2,
                         "bf16": False, "save_interval": 0},
            "logging": {"tensorboard": False}}


@hookimpl
def model_provider(config, runtime):
    return SeqModel(split_in_forward=config.model.split == "forward")


@hookimpl
def parallel_plan(model, config):
    if model.split_in_forward:
        return ParallelPlan(cp=ContextParallelPlan(heads=HEADS))
    return ParallelPlan(cp=ContextParallelPlan(split_outputs={"inp": 1}, gather_outputs={"out": 1}, heads=HEADS))


@hookimpl
def datasets_provider(config, runtime):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(config.data.num_samples, config.model.seq_len, 4, generator=g)
    ds = TensorDataset(x, x.cumsum(dim=1) / 4)
    sampler = DistributedSampler(ds, num_replicas=runtime.dp_size, rank=runtime.dp_rank, seed=config.training.seed)
    return DataLoader(ds, batch_size=config.training.micro_batch_size, sampler=sampler, drop_last=True), None, None


@hookimpl
def forward_step(batch, model, runtime):
    return model(batch[0].to(runtime.device))


@hookimpl
def loss_func(output, batch, runtime):
    return torch.nn.functional.mse_loss(output, batch[1].to(runtime.device)), {}
