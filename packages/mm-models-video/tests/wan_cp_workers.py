"""What each rank runs in the wan2_1 context-parallel test: the plugin's ContextParallelPlan applied by the engine,
forward and backward, against the whole model on one rank."""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from wan_testing import wan_config

from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.cp import use_context_parallel_attention
from mm_models_video.wan2_1.i2v import WanI2V
from mm_models_video.wan2_1.model import WanT2V
from mm_models_video.wan2_1.plugin import parallel_plan
from mm_parallel import build_context
from mm_parallel.context_plan import shard_model


def _inputs(model: WanT2V) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z = model.ae.config.z_dim
    inputs = {
        "latents": torch.randn(2, z, 3, 4, 6, generator=g),  # 3 × 2 × 3 = 18 tokens
        "prompt_embeds": torch.randn(2, model.text_len, model.text_encoder.config.d_model, generator=g),
        "noise": torch.randn(2, z, 3, 4, 6, generator=g),
        "timestep_indices": torch.tensor([100, 900]),
    }
    if isinstance(model, WanI2V):  # the image tokens stay whole on every rank; the condition is split with the clip
        inputs["image_embeds"] = torch.randn(2, model.image_tokens, model.image_encoder.config.hidden_size, generator=g)
        inputs["condition"] = torch.randn(2, 4 + z, 3, 4, 6, generator=g)
    return inputs


def _run(model: WanT2V, weight: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    pred = model(**_inputs(model))["pred"]
    (pred * weight).sum().backward()
    return pred.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def compare(rank: int, world: int, port: int, out: str, task: str = "t2v") -> None:
    """For each mode: largest output and gradient differences (relative to the largest value), tokens per rank."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("cp",))
    config = wan_config(f"model.task={task}")
    torch.manual_seed(0)
    reference = build_model(config.model)
    weight = torch.randn(2, reference.ae.config.z_dim, 3, 4, 6, generator=torch.Generator().manual_seed(1))
    expected, expected_grads = _run(copy.deepcopy(reference), weight)
    report = {}
    seen: list[int] = []
    for mode in ("ulysses", "ring"):
        model = copy.deepcopy(reference)
        use_context_parallel_attention(model.predictor)
        shard_model(model, parallel_plan(model, config).cp, build_context(mesh, mode), pipelined=False)
        model.predictor.blocks[0].register_forward_hook(lambda module, args, output: seen.append(output.shape[1]))
        pred, grads = _run(model, weight)
        # Every rank's loss is over the whole output: their gradients sum to world × the gradient (see cp docs).
        for grad in grads.values():
            dist.all_reduce(grad)
            grad /= world
        report[mode] = {
            "tokens": seen.pop(),
            "out": _relative_error(pred, expected),
            "grad": max(_relative_error(grads[name], grad) for name, grad in expected_grads.items()),
        }
    if rank == 0:
        Path(out).write_text(json.dumps(report))
    dist.destroy_process_group()


def launch(world: int, out: Path, task: str = "t2v") -> dict:
    """Run ``compare`` on ``world`` gloo processes for ``task``'s model; rank 0's report."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(compare, args=(world, port, str(out), task), nprocs=world, join=True)
    return json.loads(out.read_text())
