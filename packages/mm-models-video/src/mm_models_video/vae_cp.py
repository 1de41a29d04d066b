"""VAE context parallelism: one clip's frames encoded over a process group, the latents equal one device's encode.

A causal video VAE's encoder is a chain of per-frame layers and temporal ops (causal convolutions, strided
downsampling) whose output frame j reads input frames up to ``stride · j`` and ``kernel - 1`` frames before.
Each rank encodes a contiguous range of frames (rank 0 the causal first frame); for the duration of the encode each
temporal op is replaced by one that prepends the frames before its range (the "halo", from the previous ranks'
tails at that op), runs the original op and drops the outputs of the halo. Ranks are cut at latent boundaries, so
each one's output frames are whole. VAEs that encode fixed chunks independently (StepVideo) give whole chunks to
each rank instead (:func:`encode_chunks`), or split each chunk the same way. An op that looks at all earlier
frames (StepVideo's causal attention) takes the whole prefix as its halo: exact, without the saving.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from diffusers import AutoencoderKLWan
from torch import nn
from torch.distributed import ProcessGroup

from mm_core.errors import ConfigError


@dataclass(frozen=True)
class HaloOp:
    """A temporal op of an encoder: ``module`` reads ``kernel`` frames ending at input ``stride · j`` for output j.

    ``kernel`` None: output j reads every frame up to j (causal attention over all earlier frames; stride 1), so
    the halo is the whole prefix. ``clip_forward`` is the op on a clip that starts at the first frame (its own
    causal padding included); by default the module's forward.
    """

    module: nn.Module
    kernel: int | None
    stride: int = 1
    clip_forward: Callable[[torch.Tensor], torch.Tensor] | None = None


def _conv3d(module: nn.Module) -> nn.Conv3d:
    return module if isinstance(module, nn.Conv3d) else module.conv


def causal_conv_ops(root: nn.Module, conv_type: type[nn.Module], skip: Sequence[nn.Module] = ()) -> list[HaloOp]:
    """Every ``conv_type`` module under ``root`` with a temporal kernel over one frame (its Conv3d's, or its own).

    ``conv_type``'s forward must pad its front by kernel - 1 frames itself (zeros or the first frame repeated).
    """
    ops = []
    for module in root.modules():
        if isinstance(module, conv_type) and not any(module is other for other in skip):
            conv = _conv3d(module)
            if conv.kernel_size[0] > 1:
                ops.append(HaloOp(module, conv.kernel_size[0], conv.stride[0]))
    return ops


def wan_ops(vae: AutoencoderKLWan) -> list[HaloOp]:
    """The temporal ops of diffusers' Wan VAE encoder: its causal convolutions and time downsamplings.

    diffusers encodes the first frame alone, then 4 frames at a time through feature caches; as one clip that is
    causal zero-padded convolutions, and time downsamplings that keep frame 0 and convolve frames 2j-2..2j.
    """
    config = vae.config
    if config.get("is_residual") or config.get("patch_size") is not None:
        raise ConfigError("model.ae.vae_cp_size: VAE-CP covers the Wan2.1 VAE; this one is residual or patchified "
                          "(Wan2.2)")
    resamples = [m for m in vae.encoder.modules() if getattr(m, "mode", None) == "downsample3d"]
    ops = causal_conv_ops(vae.encoder, type(vae.encoder.conv_in), skip=[m.time_conv for m in resamples])
    for resample in resamples:
        ops.append(HaloOp(resample, 3, 2, functools.partial(_wan_downsample3d, resample)))
    return ops


def _wan_downsample3d(resample: nn.Module, x: torch.Tensor, feat_cache=None, feat_idx=None) -> torch.Tensor:
    b, _, t = x.shape[:3]
    frames = resample.resample(x.transpose(1, 2).flatten(0, 1))
    x = frames.unflatten(0, (b, t)).transpose(1, 2)
    # Frames 2j-2..2j for j >= 1: none in a clip of under 3 frames.
    return torch.cat([x[:, :, :1], resample.time_conv(x)], dim=2) if t >= 3 else x[:, :, :1]


def split_latents(latents: int, size: int) -> list[int]:
    """Latent frames per rank for ``latents`` in all: even shares, rank 0 (which also holds frame 0) the smallest."""
    after_first = latents - 1
    if after_first < size - 1:
        raise ConfigError(
            f"model.ae.vae_cp_size: a clip of {latents} latent frames cannot be split over {size} ranks "
            f"(each rank after the first needs a latent frame of its own; at most {latents} ranks)"
        )
    base, extra = divmod(after_first, size)
    shares = [base + (1 if rank >= size - extra else 0) for rank in range(size)]
    shares[0] += 1
    return shares


def frame_ranges(frames: int, stride: int, size: int) -> list[tuple[int, int]]:
    """[start, end) input frames per rank for a clip of ``1 + stride · k`` frames: each rank's latents whole."""
    if (frames - 1) % stride:
        raise ConfigError(f"model.ae.vae_cp_size: a clip of {frames} frames; VAE-CP needs 1 + {stride}·k frames")
    shares = split_latents(1 + (frames - 1) // stride, size)
    ranges, start = [], 0
    for rank, share in enumerate(shares):
        end = start + share * stride + (1 - stride if rank == 0 else 0)
        ranges.append((start, end))
        start = end
    return ranges


def _all_gather(tensor: torch.Tensor, group: ProcessGroup) -> list[torch.Tensor]:
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, tensor.contiguous(), group=group)
    return out


def halo_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, kernel: int | None, stride: int,
               group: ProcessGroup, dim: int = 2) -> torch.Tensor:
    """This rank's outputs of the temporal op ``fn`` (see :class:`HaloOp`) on the clip split over ``group``.

    Collective: every rank of ``group`` calls it at the same op. ``x`` is this rank's frames (along ``dim``).
    """
    if kernel is None:
        counts, whole = gather_counted(x, group, dim)
        start = sum(counts[: dist.get_rank(group)])
        out = fn(whole.narrow(dim, 0, start + x.shape[dim]))
        return out.narrow(dim, start, x.shape[dim])
    keep = kernel - 1 + stride - 1
    frames = x.shape[dim]
    tail = x.narrow(dim, max(frames - keep, 0), min(frames, keep))
    if frames < keep:
        shape = list(x.shape)
        shape[dim] = keep - frames
        tail = torch.cat([x.new_zeros(shape), tail], dim=dim)
    counts = _all_gather(torch.tensor([frames], dtype=torch.long, device=x.device), group)
    tails = _all_gather(tail, group)
    rank = dist.get_rank(group)
    start = int(sum(count.item() for count in counts[:rank]))
    if start == 0:
        return fn(x)
    prefix = torch.cat([t.narrow(dim, keep - min(int(c), keep), min(int(c), keep))
                        for t, c in zip(tails[:rank], counts[:rank])], dim=dim)
    # The halo starts on an output boundary (a multiple of the stride) and holds the kernel's look-back.
    halo = min(kernel - 1 + (start - kernel + 1) % stride, start)
    out = fn(torch.cat([prefix.narrow(dim, prefix.shape[dim] - halo, halo), x], dim=dim))
    dropped = -(-halo // stride)
    return out.narrow(dim, dropped, out.shape[dim] - dropped)


@contextmanager
def halo_ops(ops: Sequence[HaloOp], group: ProcessGroup) -> Iterator[None]:
    """Within the block, each op's forward is :func:`halo_apply` of its clip forward over ``group``."""
    saved = []
    for op in ops:
        clip_forward = op.clip_forward or functools.partial(type(op.module).forward, op.module)

        # Extra arguments (Wan's cache_x, feat_cache) belong to a chunked encode; the split encode needs none.
        def forward(x: torch.Tensor, *args, _fn=clip_forward, _op=op, **kwargs) -> torch.Tensor:
            return halo_apply(_fn, x, _op.kernel, _op.stride, group)

        saved.append((op.module, op.module.__dict__.get("forward")))
        op.module.forward = forward
    try:
        yield
    finally:
        for module, previous in saved:
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def gather_counted(local: torch.Tensor, group: ProcessGroup, dim: int = 2) -> tuple[list[int], torch.Tensor]:
    """Every rank's frame count and all their frames of ``group`` (uneven counts) in rank order, on every rank."""
    counts = [int(c) for c in _all_gather(torch.tensor([local.shape[dim]], device=local.device), group)]
    shape = list(local.shape)
    shape[dim] = max(counts) - local.shape[dim]
    padded = torch.cat([local, local.new_zeros(shape)], dim=dim)
    parts = _all_gather(padded, group)
    return counts, torch.cat([part.narrow(dim, 0, count) for part, count in zip(parts, counts)], dim=dim)


def gather_frames(local: torch.Tensor, group: ProcessGroup, dim: int = 2) -> torch.Tensor:
    """Every rank's frames of ``group`` (uneven counts) in rank order, on every rank."""
    return gather_counted(local, group, dim)[1]


def local_shard(frames: int, rank: int, size: int) -> tuple[int, int]:
    """[start, end) of the latent frames rank ``rank`` keeps with ``keep_local``: ``torch.tensor_split``'s shares."""
    base, extra = divmod(frames, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def redistribute_frames(local: torch.Tensor, owned: Sequence[tuple[int, int]], group: ProcessGroup,
                        dim: int = 2) -> torch.Tensor:
    """This rank's :func:`local_shard` of the frames, from ranks owning the ranges ``owned`` (point to point)."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    total = owned[-1][1]
    want = [local_shard(total, r, size) for r in range(size)]
    pieces: dict[int, torch.Tensor] = {}
    ops = []
    start, end = owned[rank]
    for dst, (lo, hi) in enumerate(want):
        lo, hi = max(lo, start), min(hi, end)
        if lo >= hi:
            continue
        piece = local.narrow(dim, lo - start, hi - lo).contiguous()
        if dst == rank:
            pieces[rank] = piece
        else:
            ops.append(dist.P2POp(dist.isend, piece, dist.get_global_rank(group, dst), group))
    lo_want, hi_want = want[rank]
    for src, (lo, hi) in enumerate(owned):
        lo, hi = max(lo, lo_want), min(hi, hi_want)
        if lo >= hi or src == rank:
            continue
        shape = list(local.shape)
        shape[dim] = hi - lo
        pieces[src] = local.new_empty(shape)
        ops.append(dist.P2POp(dist.irecv, pieces[src], dist.get_global_rank(group, src), group))
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    return torch.cat([pieces[src] for src in sorted(pieces)], dim=dim)


def _owned(counts: Sequence[int]) -> list[tuple[int, int]]:
    ranges, start = [], 0
    for count in counts:
        ranges.append((start, start + count))
        start += count
    return ranges


def _finish(local: torch.Tensor, counts: Sequence[int], group: ProcessGroup, dim: int,
            keep_local: bool) -> torch.Tensor:
    if keep_local:
        return redistribute_frames(local, _owned(counts), group, dim)
    return gather_frames(local, group, dim)


def encode_split(encode: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, ops: Sequence[HaloOp],
                 temporal_stride: int, group: ProcessGroup, keep_local: bool = False, frame_dim: int = 2,
                 latent_dim: int = 2) -> torch.Tensor:
    """``encode`` (pixels -> moments) of the whole clip ``pixels`` with its frames split over ``group``.

    Every rank passes the same clip; each encodes its :func:`frame_ranges` share with ``ops`` exchanging halos.
    Returns the whole latent on every rank, or with ``keep_local`` this rank's :func:`local_shard` of its frames.
    """
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    ranges = frame_ranges(pixels.shape[frame_dim], temporal_stride, size)
    start, end = ranges[rank]
    with halo_ops(ops, group):
        local = encode(pixels.narrow(frame_dim, start, end - start))
    counts = split_latents(1 + (pixels.shape[frame_dim] - 1) // temporal_stride, size)
    if local.shape[latent_dim] != counts[rank]:
        raise ConfigError(f"model.ae.vae_cp_size: rank {rank} encoded {local.shape[latent_dim]} latent frames, "
                          f"expected {counts[rank]}: the encoder has a temporal op VAE-CP does not know")
    return _finish(local, counts, group, latent_dim, keep_local)


def wan_encode(vae: AutoencoderKLWan, pixels: torch.Tensor, group: ProcessGroup,
               keep_local: bool = False) -> torch.Tensor:
    """The Wan VAE's posterior moments (``quant_conv`` output) of pixels [B, 3, T, H, W] in [-1, 1], split over
    ``group``: what ``vae._encode`` gives on one device."""
    if vae.use_tiling:
        raise ConfigError("model.ae.vae_cp_size: VAE-CP encodes whole frames; turn off model.ae.enable_tiling")
    return encode_split(lambda x: vae.quant_conv(vae.encoder(x)), pixels, wan_ops(vae),
                        vae.config.scale_factor_temporal, group, keep_local)


def encode_chunks(encode_chunk: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, chunk_frames: int,
                  group: ProcessGroup, keep_local: bool = False, frame_dim: int = 2,
                  latent_dim: int = 2) -> torch.Tensor:
    """For VAEs that encode fixed chunks of ``chunk_frames`` on their own: each rank encodes whole chunks.

    The result equals ``cat([encode_chunk(c) for c in pixels.split(chunk_frames, frame_dim)], latent_dim)``.
    """
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    chunks = pixels.split(chunk_frames, dim=frame_dim)
    if len(chunks) < size:
        raise ConfigError(
            f"model.ae.vae_cp_size: a clip of {pixels.shape[frame_dim]} frames is {len(chunks)} chunk(s) of "
            f"{chunk_frames}, encoded independently; VAE-CP over {size} ranks needs at least {size} chunks"
        )
    mine = local_shard(len(chunks), rank, size)
    local = torch.cat([encode_chunk(chunk) for chunk in chunks[mine[0]:mine[1]]], dim=latent_dim)
    counts = [int(c) for c in _all_gather(torch.tensor([local.shape[latent_dim]], device=local.device), group)]
    return _finish(local, counts, group, latent_dim, keep_local)


def check_vae_cp(vae_cp_size: int, cp_size: int, pp_size: int) -> None:
    """One ConfigError when ``model.ae.vae_cp_size`` cannot work with the run's context and pipeline sizes."""
    if vae_cp_size <= 1:
        return
    if pp_size > 1:
        raise ConfigError(f"model.ae.vae_cp_size={vae_cp_size} with parallel.pp.size={pp_size}: VAE-CP runs the "
                          "encoder on every rank of a context-parallel group, pipeline stages hold no encoder")
    if cp_size % vae_cp_size:
        raise ConfigError(f"model.ae.vae_cp_size={vae_cp_size} must divide parallel.cp.size={cp_size} "
                          "(the VAE-CP groups are sub-groups of the context-parallel group)")


def vae_cp_group(cp_group: ProcessGroup, size: int) -> ProcessGroup:
    """The group of ``size`` consecutive ranks of ``cp_group`` that holds this rank (``model.ae.vae_cp_size``).

    Collective over the whole world: every rank builds every context-parallel group's sub-groups, in one order.
    """
    ranks = dist.get_process_group_ranks(cp_group)
    if len(ranks) % size:
        raise ConfigError(f"model.ae.vae_cp_size={size} must divide parallel.cp.size={len(ranks)}")
    if size == len(ranks):
        return cp_group
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, ranks)
    mine = None
    for group_ranks in sorted(set(map(tuple, everyone))):
        for first in range(0, len(group_ranks), size):
            members = list(group_ranks[first:first + size])
            group = dist.new_group(members)
            if dist.get_rank() in members:
                mine = group
    return mine
