"""What each rank runs in the opensoraplan1_3 context-parallel test: the plugin's plan applied by the engine (Ulysses,
ring), forward and backward of the composite (Skiparse layers included), against the whole model on one rank."""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from opensoraplan_testing import osp_config
from torch.distributed.device_mesh import init_device_mesh

from mm_models_video.opensoraplan1_3.build import build_model
from mm_models_video.opensoraplan1_3.model import OpenSoraPlanT2V
from mm_models_video.opensoraplan1_3.plugin import parallel_plan
from mm_parallel import build_context
from mm_parallel.context_plan import shard_model

# 3 × 2 × 3 = 18 tokens: Skiparse pads them to 20; over 2 ranks each holds 9 (the ring: 10, padded to 20).
LATENTS = (2, 8, 3, 4, 6)


def _inputs(model: OpenSoraPlanT2V) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, model.text_len, dtype=torch.long)
    mask[1, 5:] = 0
    return {
        "latents": torch.randn(*LATENTS, generator=g),
        "prompt_embeds": torch.randn(2, model.text_len, model.text_encoder.config.d_model, generator=g),
        "prompt_mask": mask,
        "noise": torch.randn(*LATENTS, generator=g),
        "timesteps": torch.tensor([100, 900]),
    }


def _run(model: OpenSoraPlanT2V, weight: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    pred = model(**_inputs(model))["pred"]
    (pred * weight).sum().backward()
    return pred.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def compare(rank: int, world: int, port: int, out: str) -> None:
    """For Ulysses and ring: largest output and gradient differences (relative to the largest value), tokens."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("cp",))
    config = osp_config()
    torch.manual_seed(0)
    reference = build_model(config.model)
    weight = torch.randn(*LATENTS, generator=torch.Generator().manual_seed(1))
    expected, expected_grads = _run(copy.deepcopy(reference), weight)
    report = {}
    seen: list[int] = []
    for mode in ("ulysses", "ring"):
        model = copy.deepcopy(reference)
        shard_model(model, parallel_plan(model, config).cp, build_context(mesh, mode), pipelined=False)
        model.predictor.transformer_blocks[0].register_forward_hook(lambda m, a, output: seen.append(output.shape[1]))
        pred, grads = _run(model, weight)
        # Every rank's loss is over the whole output: their gradients sum to world × the gradient (see cp docs).
        # Softmax does not change when every key moves by the same bias: the key biases' gradients are rounding
        # noise around zero, left out of the comparison.
        for grad in grads.values():
            dist.all_reduce(grad)
            grad /= world
        report[mode] = {
            "tokens": seen.pop(),
            "out": _relative_error(pred, expected),
            "grad": max(_relative_error(grads[name], grad) for name, grad in expected_grads.items()
                        if not name.endswith("to_k.bias")),
        }
    if rank == 0:
        Path(out).write_text(json.dumps(report))
    dist.destroy_process_group()


def launch(world: int, out: Path) -> dict:
    """Run ``compare`` on ``world`` gloo processes; rank 0's report."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(compare, args=(world, port, str(out)), nprocs=world, join=True)
    return json.loads(out.read_text())
