"""The toy plugin of mm's own tests: a tiny conditioned residual network on random sequences, with its plan.

``mm run --plugin mm_core.testing.toy`` trains it on the CPU in seconds. A sample is ``model.seq_len`` tokens of
``IN`` features; each token's target (``OUT`` features) depends on the tokens up to it. The model runs a frozen
``encoder``, then ``embed`` and a condition ``cond`` (its ``pre``), residual ``blocks`` of ``(hidden, cond)`` with
causal self-attention when ``model.heads`` is set, then ``norm_out``, ``head`` and a trainable ``scale`` (its
``post``). The model section also sets width and depth, dropout, a weight tied across the two ends (``tie``:
``skip`` shares ``cond``'s weight), a build on the meta device (``meta``), pretrained weights and a model that
shards itself (``self_sharding``). A plugin stacked on it changes one piece: mm-parallel's context-parallel tests
build it with ``mm_parallel.attention`` (:func:`build`'s ``attention``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mm_core.config import Config
from mm_core.errors import ConfigError
from mm_core.hookspecs import hookimpl
from mm_core.plan import ParallelPlan, PipelinePlan, Pretrained

IN, OUT = 4, 2
"""Features of an input token and of its target."""

Attention = Callable[..., torch.Tensor]
"""``attention(q, k, v, causal=True)`` of ``(batch, sequence, heads, head_dim)`` tensors, as mm_parallel's."""


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """Softmax attention of ``(batch, sequence, heads, head_dim)`` tensors in one process."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
    return out.transpose(1, 2)


class Block(torch.nn.Module):
    """``hidden`` plus causal self-attention (with heads) and an MLP, both of ``norm(hidden) + cond``."""

    def __init__(self, dim: int, heads: int, dropout: float, attention: Attention) -> None:
        super().__init__()
        self.heads = heads
        self.attention = attention
        self.norm = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim) if heads else None
        self.fc1 = torch.nn.Linear(dim, 2 * dim)
        self.fc2 = torch.nn.Linear(2 * dim, dim)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The block's output, of ``h``'s shape."""
        x = self.norm(h) + cond
        if self.qkv is not None:
            q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).unbind(-3)
            h = h + self.attention(q, k, v, causal=True).flatten(-2)
        return h + self.fc2(self.dropout(F.gelu(self.fc1(x))))


class ToyModel(torch.nn.Module):
    """``encoder`` (frozen) → ``embed`` and ``cond`` → ``blocks`` → ``norm_out`` → ``head`` × ``scale``."""

    def __init__(
        self, dim: int, depth: int, heads: int = 0, dropout: float = 0.0, tie: bool = False,
        attention: Attention = sdpa,
    ) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(IN, IN).requires_grad_(False)
        self.embed = torch.nn.Linear(IN, dim)
        self.cond = torch.nn.Linear(IN, dim)
        self.blocks = torch.nn.ModuleList(Block(dim, heads, dropout, attention) for _ in range(depth))
        self.norm_out = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, OUT)
        # Held by the root, outside every stage module; not 0-d, as torch treats a 0-d gradient as a scalar.
        self.scale = torch.nn.Parameter(torch.full((OUT,), 0.5))
        self.register_buffer("shift", torch.tensor(0.1))
        self.skip = None
        if tie:
            self.skip = torch.nn.Linear(IN, dim, bias=False)
            self.skip.weight = self.cond.weight

    def init_weights(self) -> None:
        """Fresh weights once a meta-device build is allocated: each layer's own initialization, then scale, shift."""
        for module in self.modules():
            if module is not self and callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
        for tensor, value in ((self.scale, 0.5), (self.shift, 0.1)):
            if tensor is not None:  # a pipeline stage holds only its own end's
                tensor.fill_(value)

    def pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything before the blocks: ``(hidden, cond)`` of the input tokens."""
        e = self.encoder(x)
        return self.embed(e) + self.shift, self.cond(e.flip(-1))

    def post(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Everything after the blocks: the output of the last hidden state (and of the input, with ``skip``)."""
        h = self.norm_out(h)
        if self.skip is not None:
            h = h + self.skip(x)
        return self.head(h) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, sequence, IN)`` tokens -> ``(batch, sequence, OUT)``."""
        h, cond = self.pre(x)
        for block in self.blocks:
            h = block(h, cond)
        return self.post(h, x)


class SelfShardingToy(ToyModel):
    """Shards itself like the seeds' custom ``_fully_shard``: only the even blocks."""

    def fully_shard(self, mesh, fsdp_kwargs: dict, config: Config) -> None:
        """FSDP2 units of the even blocks; the options it got are kept as ``shard_config``."""
        self.shard_config = config
        for block in self.blocks[::2]:
            fully_shard(block, mesh=mesh, **fsdp_kwargs)


def build(model: Config, cls: type[ToyModel] = ToyModel, attention: Attention = sdpa) -> ToyModel:
    """``cls`` as the model section ``model`` describes it, its weights drawn from ``model.init_seed``."""
    if model.heads and model.dim % model.heads:
        raise ConfigError(f"model.heads {model.heads} must divide model.dim {model.dim}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model.init_seed)
        return cls(model.dim, model.depth, model.heads, model.dropout, model.tie, attention)


class Samples(Dataset):
    """``n`` random sequences drawn from ``seed``; a token's target: tanh of one fixed linear map of the mean of the
    tokens up to it."""

    def __init__(self, n: int, seq_len: int, seed: int) -> None:
        self.x = torch.randn(n, seq_len, IN, generator=torch.Generator().manual_seed(seed))
        mean = self.x.cumsum(dim=1) / torch.arange(1, seq_len + 1).unsqueeze(-1)
        self.y = torch.tanh(mean @ torch.randn(IN, OUT, generator=torch.Generator().manual_seed(0)))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index]}


@hookimpl
def default_config(task: str) -> dict:
    """A 4-block model of width 8 on 64 one-token samples, 6 steps on the CPU."""
    return {
        "model": {"dim": 8, "depth": 4, "heads": 0, "seq_len": 1, "dropout": 0.0, "tie": False, "init_seed": 7,
                  "meta": False, "pretrained": None, "self_sharding": False},
        "data": {"num_samples": 64, "valid_samples": 16},
        "training": {"train_iters": 6, "global_batch_size": 8, "micro_batch_size": 2, "lr": 1e-2, "bf16": False,
                     "save_interval": 3, "lr_warmup_iters": 1, "device": "cpu"},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


@hookimpl
def model_provider(config: Config, runtime) -> ToyModel:
    """The toy of the model section, on the meta device with ``model.meta``."""
    cls = SelfShardingToy if config.model.self_sharding else ToyModel
    with torch.device("meta") if config.model.meta else contextlib.nullcontext():
        return build(config.model, cls)


def _pretrained(model: Config) -> Pretrained | None:
    """``model.pretrained``: true, the weights one process builds; a string, an mm checkpoint directory."""
    if model.pretrained is True:
        return lambda: build(model).state_dict()
    return model.pretrained


@hookimpl
def parallel_plan(model: ToyModel, config: Config) -> ParallelPlan:
    """FSDP2 units of the blocks, the pretrained weights, and the pipeline cut between the blocks."""
    return ParallelPlan(
        fsdp_modules=["blocks.{*}"],
        pretrained=_pretrained(config.model),
        pipeline=PipelinePlan(
            layers="blocks",
            pre=lambda model, batch: model.pre(batch["x"]),
            post=lambda model, carry, batch: model.post(carry[0], batch["x"]),
            pre_modules=["encoder", "embed", "cond", "shift"],
            post_modules=["norm_out", "head", "scale", *(["skip"] if config.model.tie else [])],
        ),
    )


@hookimpl
def datasets_provider(config: Config, runtime) -> tuple[DataLoader, DataLoader, None]:
    """Training batches shared out over the data-parallel ranks; the same validation batches on every rank."""
    seq_len, training = config.model.seq_len, config.training
    train = Samples(config.data.num_samples, seq_len, seed=0)
    sampler = DistributedSampler(train, num_replicas=runtime.dp_size, rank=runtime.dp_rank, seed=training.seed)
    valid = Samples(config.data.valid_samples, seq_len, seed=1)
    return (DataLoader(train, batch_size=training.micro_batch_size, sampler=sampler, drop_last=True),
            DataLoader(valid, batch_size=training.micro_batch_size), None)


@hookimpl
def forward_step(batch: Mapping[str, torch.Tensor], model: torch.nn.Module, runtime) -> torch.Tensor:
    """The model's output for the batch's tokens."""
    return model(batch["x"])


@hookimpl
def loss_func(output: torch.Tensor, batch: Mapping[str, torch.Tensor], runtime) -> tuple[torch.Tensor, dict]:
    """Mean squared error, and the batch's token count."""
    return F.mse_loss(output.float(), batch["y"]), {"tokens": float(batch["y"].shape[:-1].numel())}
