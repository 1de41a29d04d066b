"""A toy plugin for the pipeline tests: embed → conditioned residual MLP blocks → head, on fixed random data.

The blocks take ``(hidden, cond)``: ``cond`` comes from a trainable embedding before the stack, so its gradient
must travel back through every stage. Its parallel_plan is the pattern a plugin author follows. With
``model.tie``, the head also adds ``skip(x)``, a projection whose weight is ``cond``'s (tied across the stages,
like an LLM's input embedding and output projection).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from mm_core import ParallelPlan, PipelinePlan, hookimpl


class Block(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, 2 * dim)
        self.fc2 = torch.nn.Linear(2 * dim, dim)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(h) + cond)))


class StackNet(torch.nn.Module):
    def __init__(self, dim: int, depth: int, tie: bool = False) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(4, dim)
        self.cond = torch.nn.Linear(4, dim)
        self.blocks = torch.nn.ModuleList(Block(dim) for _ in range(depth))
        self.norm_out = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, 2)
        # Held by the root, outside every stage module; not 0-d, as torch treats a 0-d gradient as a scalar.
        self.scale = torch.nn.Parameter(torch.full((2,), 0.5))
        self.register_buffer("shift", torch.tensor(0.1))
        self.skip = None
        if tie:
            self.skip = torch.nn.Linear(4, dim, bias=False)
            self.skip.weight = self.cond.weight

    def pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(x) + self.shift, self.cond(x.flip(-1))

    def post(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_out(h)
        if self.skip is not None:
            h = h + self.skip(x)
        return self.head(h) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, cond = self.pre(x)
        for block in self.blocks:
            h = block(h, cond)
        return self.post(h, x)


@hookimpl
def default_config(task):
    return {
        "model": {"dim": 8, "depth": 8, "init_seed": 7, "meta": False, "tie": False},
        "data": {"num_samples": 64},
        "training": {"train_iters": 4, "global_batch_size": 8, "micro_batch_size": 2, "lr": 1e-2, "bf16": False,
                     "save_interval": 0, "clip_grad": 0.5, "eval_interval": 2, "eval_iters": 2},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


@hookimpl
def model_provider(config, runtime):
    torch.manual_seed(config.model.init_seed)
    model = StackNet(config.model.dim, config.model.depth, config.model.tie)
    if config.model.meta:
        # The same weights, delivered as pretrained ones into a model built on the meta device.
        weights = model.state_dict()
        with torch.device("meta"):
            model = StackNet(config.model.dim, config.model.depth, config.model.tie)
        model.pretrained = lambda: weights
    return model


@hookimpl
def parallel_plan(model, config):
    return ParallelPlan(
        fsdp_modules=["blocks.{*}"],
        pretrained=getattr(model, "pretrained", None),
        pipeline=PipelinePlan(
            layers="blocks",
            pre=lambda model, batch: model.pre(batch[0]),
            post=lambda model, carry, batch: model.post(carry[0], batch[0]),
            pre_modules=["embed", "cond", "shift"],
            post_modules=["norm_out", "head", "scale", *(["skip"] if config.model.tie else [])],
        ),
    )


@hookimpl
def datasets_provider(config, runtime):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(config.data.num_samples, 4, generator=g)
    y = torch.stack([x.sum(dim=1).sin(), x[:, 0] * x[:, 1]], dim=1)
    ds = TensorDataset(x, y)
    sampler = DistributedSampler(ds, num_replicas=runtime.dp_size, rank=runtime.dp_rank, seed=config.training.seed)
    train = DataLoader(ds, batch_size=config.training.micro_batch_size, sampler=sampler, drop_last=True)
    return train, DataLoader(ds, batch_size=4), None


@hookimpl
def forward_step(batch, model, runtime):
    return model(batch[0])


@hookimpl
def loss_func(output, batch, runtime):
    loss = torch.nn.functional.mse_loss(output, batch[1])
    return loss, {"tokens": float(batch[0].shape[0])}
