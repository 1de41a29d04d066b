"""Workers of the VAE-CP tests: each tiny VAE's latents on N gloo ranks against one process's encode."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from diffusers import AutoencoderKLWan
from torch import nn

from mm_models_video import vae_cp
from mm_models_video.encoders import TINY_VAE
from mm_models_video.frozen import FrozenEncoders
from mm_models_video.opensoraplan1_3.flavors import FLAVORS as OSP_FLAVORS
from mm_models_video.opensoraplan1_3.wfvae import WFVAEModel
from mm_models_video.opensoraplan1_3.wfvae_blocks import CausalConv3d
from mm_models_video.stepvideo.flavors import FLAVORS as STEP_FLAVORS
from mm_models_video.stepvideo.vae import FRAME_LEN, TEMPORAL_STRIDE, StepVideoVAE, split_ops


def _clip(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(3)) * 2 - 1


def _error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def wan(group: dist.ProcessGroup, frames: int) -> dict:
    """Wan VAE moments: gathered and kept local, against diffusers' chunked single-device encode."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**TINY_VAE).eval()
    clip = _clip(1, 3, frames, 16, 16)
    expected = vae._encode(clip)
    whole = vae_cp.wan_encode(vae, clip, group)
    local = vae_cp.wan_encode(vae, clip, group, keep_local=True)
    start, end = vae_cp.local_shard(expected.shape[2], dist.get_rank(group), dist.get_world_size(group))
    composite = FrozenEncoders(vae, nn.Identity())
    latents = composite.encode_video(clip)
    composite.vae_cp_group = group
    return {"whole": _error(whole, expected), "local": _error(local, expected[:, :, start:end]),
            "local_frames": local.shape[2], "encode_video": _error(composite.encode_video(clip), latents)}


def wfvae(group: dist.ProcessGroup, frames: int) -> dict:
    """WF-VAE encoder moments against the single-device encode."""
    torch.manual_seed(0)
    vae = WFVAEModel(**OSP_FLAVORS["tiny"].ae).eval()
    clip = _clip(1, 3, frames, 16, 16)
    expected = vae.encoder(clip)
    ops = vae_cp.causal_conv_ops(vae.encoder, CausalConv3d)
    whole = vae_cp.encode_split(vae.encoder, clip, ops, vae.strides[0], group)
    alone = vae_cp.encode_split(vae.encoder, clip, ops, vae.strides[0], vae_cp.vae_cp_group(group, 1))
    return {"whole": _error(whole, expected), "alone": _error(alone, expected)}


def stepvideo(group: dist.ProcessGroup, chunks: int) -> dict:
    """StepVideo VAE moments (whole 17-frame chunks per rank) against encode_moments."""
    torch.manual_seed(0)
    vae = StepVideoVAE(**STEP_FLAVORS["tiny"].vae).eval()
    clip = _clip(1, FRAME_LEN * chunks, 3, 32, 32)
    mean, logvar = vae.encode_moments(clip)
    whole = vae_cp.encode_chunks(lambda c: vae.encoder(c.transpose(1, 2)), clip, FRAME_LEN, group,
                                 frame_dim=1, latent_dim=2).transpose(1, 2)
    got_mean, got_logvar = whole.chunk(2, dim=2)
    return {"whole": max(_error(got_mean, mean), _error(got_logvar.clamp(-30.0, 20.0), logvar))}


def stepvideo_split(group: dist.ProcessGroup, chunks: int) -> dict:
    """StepVideo VAE moments with each 17-frame chunk's frames split over the ranks (halos, the causal attention
    over the whole prefix) against encode_moments."""
    torch.manual_seed(0)
    vae = StepVideoVAE(**STEP_FLAVORS["tiny"].vae).eval()
    clip = _clip(1, FRAME_LEN * chunks, 3, 32, 32)
    mean, logvar = vae.encode_moments(clip)
    encoder = vae.encoder
    parts = [vae_cp.encode_split(encoder, chunk.transpose(1, 2), split_ops(encoder), TEMPORAL_STRIDE, group)
             for chunk in clip.split(FRAME_LEN, dim=1)]
    got_mean, got_logvar = torch.cat(parts, dim=2).transpose(1, 2).chunk(2, dim=2)
    return {"whole": max(_error(got_mean, mean), _error(got_logvar.clamp(-30.0, 20.0), logvar))}


CASES = {"stepvideo_split": stepvideo_split, "wan": wan, "wfvae": wfvae, "stepvideo": stepvideo}


def compare(rank: int, world: int, port: int, out: str, cases: list[tuple[str, int]]) -> None:
    """Each case's report from rank 0 (rank-local numbers as lists over the ranks)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    group = dist.group.WORLD
    report = {}
    with torch.no_grad():
        for name, size in cases:
            result = CASES[name](group, size)
            gathered: list = [None] * world
            dist.all_gather_object(gathered, result)
            report[f"{name}/{size}"] = {key: [r[key] for r in gathered] for key in result}
    if rank == 0:
        Path(out).write_text(json.dumps(report))
    dist.destroy_process_group()


def launch(world: int, out: Path, cases: list[tuple[str, int]]) -> dict:
    """Run ``compare`` on ``world`` gloo processes; rank 0's report."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Forked, the workers share the parent's imports (spawned ones spend most of a fast test importing).
    mp.start_processes(compare, args=(world, port, str(out), cases), nprocs=world, join=True, start_method="fork")
    return json.loads(out.read_text())
