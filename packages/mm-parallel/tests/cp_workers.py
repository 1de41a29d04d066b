"""What each rank runs in the context-parallel tests: many cases per spawn, compared on rank 0, written as JSON."""

from __future__ import annotations

import copy
import itertools
import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh

from mm_core import ContextParallelPlan
from mm_core.errors import ConfigError
from mm_parallel import ContextParallel, attention, build_context, context_parallel, gather_sequence, split_sequence
from mm_parallel.context import active_scope
from mm_parallel.context_plan import shard_model
from mm_parallel.recompute import apply_recompute


def _max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def attention_errors(
    cp: ContextParallel, seed: int, length: int, heads: int, causal: bool, layout: str, kv_heads: int | None = None
) -> dict[str, float]:
    """Largest differences of output and q/k/v gradients between ``cp`` and SDPA on the whole sequence."""
    torch.manual_seed(seed)
    seq_dim = 1 if layout == "bshd" else 2

    def shape(h: int) -> tuple[int, ...]:
        return (2, length, h, 8) if layout == "bshd" else (2, h, length, 8)

    q, k, v = (torch.randn(shape(h)) for h in (heads, kv_heads or heads, kv_heads or heads))
    grad = torch.randn(shape(heads))
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    bhsd = [t.transpose(1, 2) if layout == "bshd" else t for t in full]
    expected = F.scaled_dot_product_attention(*bhsd, is_causal=causal, enable_gqa=kv_heads is not None)
    expected = expected.transpose(1, 2) if layout == "bshd" else expected
    expected.backward(grad)

    with context_parallel(cp):
        shards = [split_sequence(t, seq_dim).requires_grad_() for t in (q, k, v)]
        out = attention(*shards, causal=causal, layout=layout)
        out.backward(split_sequence(grad, seq_dim))
        result = {"out": _max_error(gather_sequence(out.detach(), seq_dim), expected.detach())}
        for name, shard, reference in zip("qkv", shards, full):
            result[f"d{name}"] = _max_error(gather_sequence(shard.grad, seq_dim), reference.grad)
    return result


def sequence_errors(cp: ContextParallel, length: int) -> dict[str, float]:
    """gather(split(x)) == x, and the gather's backward gives each rank its part of the gradient summed over ranks.

    Outside a scope the groups and the true length are given explicitly.
    """
    x = torch.randn(3, length, 2, generator=torch.Generator().manual_seed(length))
    weight = torch.randn(3, length, 2, generator=torch.Generator().manual_seed(length + 1))
    shard = split_sequence(x, 1, cp).requires_grad_()
    (gather_sequence(shard, 1, cp, length) * weight).sum().backward()
    return {
        "roundtrip": _max_error(gather_sequence(shard.detach(), 1, cp, length), x),
        "grad": _max_error(shard.grad, cp.size * split_sequence(weight, 1, cp)),
    }


def error_message(cp: ContextParallel, heads: int) -> str:
    """The ConfigError a cp attention over ``heads`` heads raises, or '' if it runs."""
    q = torch.randn(1, 4 * cp.size, heads, 8)
    try:
        attention(*(split_sequence(q, 1, cp) for _ in range(3)), cp_group=cp)
    except ConfigError as exc:
        return str(exc)
    return ""


class _Table(torch.nn.Module):
    """A table computed for the whole sequence, as RoPE's is: the plan splits its output."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.freq = torch.nn.Parameter(torch.randn(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(torch.arange(x.shape[1], dtype=x.dtype)[None, :, None] * self.freq)


class _Block(torch.nn.Module):
    """Attention inside a module, so that activation checkpointing runs it again in backward."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)

    def forward(self, h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        h = h + table
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, -1)).unbind(2)
        return h + attention(q, k, v, causal=True).flatten(2)


class _Net(torch.nn.Module):
    def __init__(self, heads: int, dim: int = 8) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(4, dim)
        self.table = _Table(dim)
        self.blocks = torch.nn.ModuleList(_Block(dim, heads) for _ in range(2))
        self.out = torch.nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table, h = self.table(x), self.inp(x)
        for block in self.blocks:
            h = block(h, table)
        return self.out(h)


PLAN = ContextParallelPlan(split_inputs={"blocks.0": 1}, split_outputs={"table": 1}, gather_outputs={"out": 1})
RECOMPUTE = {"none": None, "full": {"use_reentrant": True, "mode": "full"}, "selective": {"mode": "selective"}}


def engine_errors(cp: ContextParallel, length: int, heads: int, recompute: str) -> dict[str, float]:
    """Largest differences of output and parameter gradients between the plan applied over ``cp`` and one rank.

    Every rank's loss is over the whole (gathered) output, so their gradients sum to cp.size × the gradient.
    """
    torch.manual_seed(length)
    reference = _Net(heads)
    model = copy.deepcopy(reference)
    x, weight = torch.randn(2, 2, length, 4).unbind(0)
    expected = reference(x)
    (expected * weight).sum().backward()
    shard_model(model, PLAN, cp, pipelined=False)
    if RECOMPUTE[recompute] is not None:
        apply_recompute(model, ["blocks.{*}"], **RECOMPUTE[recompute])
    out = model(x)
    (out * weight).sum().backward()
    errors = []
    for param, expected_param in zip(model.parameters(), reference.parameters(), strict=True):
        dist.all_reduce(param.grad, group=cp.group)
        errors.append(_max_error(param.grad / cp.size, expected_param.grad))
    # The forward's scope ends with its backward: nothing is left for the next step to find.
    return {"out": _max_error(out.detach(), expected.detach()), "grad": max(errors), "open": active_scope() is not None}


def _cases(cp: ContextParallel, lengths: tuple[int, ...], heads: int) -> dict[str, dict[str, float]]:
    report = {}
    for seed, (length, causal) in enumerate(itertools.product(lengths, (False, True))):
        layout = ("bshd", "bhsd")[(seed + seed // 2) % 2]
        report[f"{cp.mode}-{length}-{'causal' if causal else 'full'}-{layout}"] = attention_errors(
            cp, seed, length, heads, causal, layout
        )
    report[f"{cp.mode}-gqa"] = attention_errors(cp, 99, lengths[-1], heads, True, "bshd", kv_heads=heads // 2)
    report[f"{cp.mode}-sequence"] = sequence_errors(cp, lengths[-1])
    return report


def check(out: str) -> None:
    """Every mode this world size allows, against one-process SDPA; rank 0 writes the report to ``out``."""
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    # Shaped like mm-core's runtime mesh: cp is a dim of a larger mesh that was also flattened with dp_shard.
    root = init_device_mesh("cpu", (1, world), mesh_dim_names=("dp_shard", "cp"))
    root["dp_shard", "cp"]._flatten("dp_shard_cp")
    mesh = root["cp"]
    lengths = (4 * world, 3 * world + 1, world - 1)
    report = {}
    for mode in ("ulysses", "ring"):
        report |= _cases(build_context(mesh, mode), lengths, heads=world)
    # Double ring: windows of 2 ranks on 4 (inner and outer rings both used), of 1 on 2 (outer ring only).
    double = build_context(mesh, "ring", window_size=world // 2)
    report |= {f"double-{k}": v for k, v in _cases(double, lengths, heads=world).items()}
    engine = {
        f"{mode}-{length}-{recompute}": engine_errors(build_context(mesh, mode), length, world, recompute)
        for mode in ("ulysses", "ring")
        for length, recompute in itertools.product((4 * world, 3 * world + 1), RECOMPUTE)
    }
    errors = {"ulysses": error_message(build_context(mesh, "ulysses"), heads=world + 1)}
    try:
        build_context(mesh, "ring", window_size=3)
    except ConfigError as exc:
        errors["window"] = str(exc)
    if world == 4:
        usp = build_context(mesh, "usp", ulysses_degree=2)
        report |= _cases(usp, lengths, heads=2)
        usp_double = build_context(mesh, "usp", ulysses_degree=2, window_size=1)
        report |= {f"uspdouble-{k}": v for k, v in _cases(usp_double, (7,), heads=2).items()}
        errors["usp"] = error_message(usp, heads=3)
        pairs = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "cp"))["cp"]
        report |= {f"pairs-{k}": v for k, v in _cases(build_context(pairs, "ring"), (5,), heads=2).items()}
    if int(os.environ["RANK"]) == 0:
        with open(out, "w") as f:
            json.dump({"errors": report, "engine": engine, "messages": errors}, f)
