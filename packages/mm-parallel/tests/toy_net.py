"""A toy plugin for mm-parallel's tests: a frozen encoder, residual MLP blocks and a head, on random data."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from mm_core import ParallelPlan, hookimpl


class Block(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, 2 * dim)
        self.fc2 = torch.nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


class ToyNet(torch.nn.Module):
    def __init__(self, dim: int, depth: int) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(dim, dim)
        self.encoder.requires_grad_(False)
        self.blocks = torch.nn.ModuleList(Block(dim) for _ in range(depth))
        self.head = torch.nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


class SelfShardingNet(ToyNet):
    """Shards itself like the seeds' custom ``_fully_shard``: only the even blocks."""

    def fully_shard(self, mesh, fsdp_kwargs, config) -> None:
        from torch.distributed.fsdp import fully_shard

        self.shard_config = config
        for block in self.blocks[::2]:
            fully_shard(block, mesh=mesh, **fsdp_kwargs)


def build_cpu(model_config) -> ToyNet:
    """The model as a single CPU process builds it, from the seed."""
    torch.manual_seed(model_config.init_seed)
    cls = SelfShardingNet if model_config.self_sharding else ToyNet
    return cls(model_config.dim, model_config.depth)


@hookimpl
def default_config(task):
    return {
        "model": {"dim": 8, "depth": 4, "init_seed": 7, "meta": False, "pretrained": None, "self_sharding": False},
        "data": {"num_samples": 64},
        "training": {
            "train_iters": 6,
            "global_batch_size": 8,
            "micro_batch_size": 2,
            "lr": 1e-2,
            "bf16": False,
            "save_interval": 3,
            "lr_warmup_iters": 1,
            "device": "cpu",
        },
        "logging": {"tensorboard": False, "progress_bar": False},
    }


@hookimpl
def model_provider(config, runtime):
    if config.model.meta:
        with torch.device("meta"):
            return build_cpu(config.model)
    return build_cpu(config.model)


@hookimpl
def parallel_plan(model, config):
    source = config.model.pretrained  # True: the CPU-built weights; a string: an mm checkpoint directory
    if source and not isinstance(source, str):
        source = lambda: build_cpu(config.model).state_dict()  # noqa: E731
    return ParallelPlan(fsdp_modules=["blocks.{*}"], pretrained=source or None)


@hookimpl
def datasets_provider(config, runtime):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(config.data.num_samples, config.model.dim, generator=g)
    y = x.sum(dim=1, keepdim=True).sin()
    ds = TensorDataset(x, y)
    sampler = DistributedSampler(
        ds, num_replicas=runtime.dp_size, rank=runtime.dp_rank, shuffle=True, seed=config.training.seed
    )
    return DataLoader(ds, batch_size=config.training.micro_batch_size, sampler=sampler, drop_last=True), None, None


@hookimpl
def get_batch(data_iterator, runtime):
    x, y = next(data_iterator)
    return {"x": x.to(runtime.device), "y": y.to(runtime.device)}


@hookimpl
def forward_step(batch, model, runtime):
    return model(batch["x"])


@hookimpl
def loss_func(output, batch, runtime):
    return torch.nn.functional.mse_loss(output.float(), batch["y"]), {}
