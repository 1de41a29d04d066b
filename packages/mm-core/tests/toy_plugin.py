"""A tiny regression plugin used by mm-core's tests: an MLP with dropout on random data."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from mm_core import hookimpl


class ToyModel(torch.nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(
            [torch.nn.Linear(dim, hidden), torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, 1)]
        )
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.dropout(torch.relu(layer(x)))
        return self.layers[-1](x)


@hookimpl
def default_config(task):
    return {
        "model": {"dim": 8, "hidden": 32, "dropout": 0.1},
        "data": {"num_samples": 64, "valid_samples": 16},
        "training": {"train_iters": 10, "global_batch_size": 8, "micro_batch_size": 2, "lr": 1e-2,
                     "bf16": False, "save_interval": 5, "lr_warmup_iters": 2},
        "logging": {"tensorboard": False},
    }


@hookimpl
def model_provider(config, runtime):
    m = config.model
    return ToyModel(m.dim, m.hidden, m.dropout)


def _dataset(n: int, dim: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 1, generator=g)
    return TensorDataset(x, x @ w + 0.1 * torch.randn(n, 1, generator=g))


def _loader(ds, config, runtime) -> DataLoader:
    sampler = DistributedSampler(ds, num_replicas=runtime.dp_size, rank=runtime.dp_rank,
                                 shuffle=True, seed=config.training.seed)
    return DataLoader(ds, batch_size=config.training.micro_batch_size, sampler=sampler, drop_last=True)


@hookimpl
def datasets_provider(config, runtime):
    dim = config.model.dim
    train = _loader(_dataset(config.data.num_samples, dim, 0), config, runtime)
    valid = _loader(_dataset(config.data.valid_samples, dim, 1), config, runtime)
    return train, valid, None


@hookimpl
def get_batch(data_iterator, runtime):
    x, y = next(data_iterator)
    return {"x": x.to(runtime.device), "y": y.to(runtime.device)}


@hookimpl
def forward_step(batch, model, runtime):
    return model(batch["x"])


@hookimpl
def loss_func(output, batch, runtime):
    loss = torch.nn.functional.mse_loss(output.float(), batch["y"])
    return loss, {"tokens": float(batch["x"].shape[0])}
