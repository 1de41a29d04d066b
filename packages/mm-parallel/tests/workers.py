"""What each rank runs in the distributed tests; results go to JSON files the test process compares."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from mm_core.plugins import load_plugins, make_config
from mm_core.runtime import create_runtime
from mm_core.testing import run_training, toy
from mm_core.trainer import model_plan
from mm_parallel.parallelize import parallelize
from mm_parallel.patterns import named_modules


def build(overrides: list[str]):
    """The toy model as the trainer builds it (model_provider, then the engines), and its runtime."""
    pm = load_plugins([toy])
    runtime = create_runtime(make_config(pm, "run", overrides=overrides))
    model = pm.hook.model_provider(config=runtime.config, runtime=runtime)
    return parallelize(model, model_plan(pm.hook, model, runtime.config), runtime.config, runtime), runtime


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, gathered if it is sharded."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def tree(model: torch.nn.Module) -> dict[str, list[str]]:
    """Which module paths are FSDP units, checkpoint-wrapped, or hold unsharded parameters."""
    modules = named_modules(model)
    return {
        "fsdp": [n for n, m in modules.items() if isinstance(m, FSDPModule)],
        "recompute": [n for n, m in modules.items() if isinstance(m, CheckpointWrapper)],
        "plain_params": sorted(
            n.replace("_checkpoint_wrapped_module.", "")
            for n, p in model.named_parameters()
            if not isinstance(p, DTensor)
        ),
    }


def gradients_match(model: torch.nn.Module, runtime, model_config) -> bool:
    """One backward on this rank's share of a batch gives the gradients of one CPU model on the whole batch."""
    batch = toy.Samples(8, model_config.seq_len, seed=3)
    x, y = batch.x, batch.y
    share = slice(runtime.dp_rank, None, runtime.dp_size)
    torch.nn.functional.mse_loss(model(x[share]), y[share]).backward()
    reference = toy.build(model_config)
    torch.nn.functional.mse_loss(reference(x), y).backward()
    grads = {
        n.replace("_checkpoint_wrapped_module.", ""): full(p.grad)
        for n, p in model.named_parameters()
        if p.grad is not None
    }
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    return grads.keys() == expected.keys() and all(
        torch.allclose(grads[n], expected[n], rtol=1e-5, atol=1e-6) for n in expected
    )


def inspect(out: str, overrides: list[str]) -> None:
    """Write the module tree, gradient check and parameter equality with the CPU-built model to ``out``."""
    model, runtime = build(overrides)
    reference = toy.build(runtime.config.model).state_dict()
    state = {n.replace("_checkpoint_wrapped_module.", ""): full(p) for n, p in model.state_dict().items()}
    report = {
        **tree(model),
        "matches_cpu_model": all(torch.equal(state[n], reference[n]) for n in reference),
        "norm_weights": sorted({float(v) for n, p in state.items() if n.endswith("norm.weight") for v in p}),
        "scale": state["scale"].tolist(),
        "gradients_match": gradients_match(model, runtime, runtime.config.model),
        "self_sharded": hasattr(model, "shard_config"),
        "placements": sorted({str(p.placements) for p in model.parameters() if isinstance(p, DTensor)}),
        "sharded_dtypes": sorted({str(p.dtype) for p in model.parameters() if isinstance(p, DTensor)}),
        "output_dtype": str(model(torch.zeros(2, 1, toy.IN)).dtype),
    }
    if runtime.rank == 0:
        Path(out).write_text(json.dumps(report))


def train(out: str, output_dir: str, overrides: list[str]) -> None:
    """Run mm's trainer and write its per-step losses to ``out``."""
    result = run_training([toy], output_dir, overrides)
    if torch.distributed.get_rank() == 0:
        Path(out).write_text(json.dumps(result.losses))
