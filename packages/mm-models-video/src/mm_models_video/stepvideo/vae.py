"""The Step-Video VAE v2: 16× spatial and 8× temporal compression, causal in time, with the release's names.

17 frames encode to 3 latent frames (each 17-frame chunk on its own, as the release encodes), latents are laid out
frames before channels ([B, F, C, H, W]); decoding turns each 3-frame latent chunk into 17 frames and blends the
frames where two chunks meet. Group norms normalize each frame on its own (the release's ``spatial`` mode of v2).
``from_file`` loads the released ``vae_v2.safetensors``. With a VAE-CP group (``model.ae.vae_cp_size``) the encode
is split over its ranks: whole chunks per rank (``vae_cp.encode_chunks``), or each chunk's frames when the clip has
fewer chunks than ranks (``vae_cp.encode_split``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.distributed import ProcessGroup

from mm_models_video import vae_cp

FRAME_LEN = 17
LATENT_LEN = 3
SPATIAL_STRIDE = 16
TEMPORAL_STRIDE = 8
# Where two decoded chunks meet, each of the two frames keeps this much of itself and takes the rest of the other.
REMAIN_SCALE = 0.6


def frame_group_norm(x: torch.Tensor, norm: nn.GroupNorm, silu: bool = False) -> torch.Tensor:
    """GroupNorm of each frame of x [B, C, T, H, W] on its own, optionally followed by SiLU."""
    frames = x.transpose(1, 2).flatten(0, 1)
    out = F.group_norm(frames, norm.num_groups, norm.weight, norm.bias, norm.eps)
    if silu:
        out = F.silu(out)
    return out.unflatten(0, (x.shape[0], x.shape[2])).transpose(1, 2)


class CausalConv(nn.Module):
    """A Conv3d padded with zeros before the first frame (causal in time) and on both sides in space."""

    def __init__(self, chan_in: int, chan_out: int, kernel_size: int | Sequence[int], stride: int = 1) -> None:
        super().__init__()
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        self.padding = (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0)
        stride = (stride,) * 3 if isinstance(stride, int) else stride
        self.conv = nn.Conv3d(chan_in, chan_out, (kt, kh, kw), stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, C', T', H', W']."""
        return self.conv(F.pad(x, self.padding))


def pixel_unshuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(frames, rows, columns) blocks of ``factor`` into channels; the first block has factor - 1 zero frames."""
    x = F.pad(x, (0, 0, 0, 0, factor - 1, 0))
    b, c, t, h, w = x.shape
    x = x.view(b, c, t // factor, factor, h // factor, factor, w // factor, factor)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * factor**3, t // factor, h // factor, w // factor)


def pixel_shuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The inverse of :func:`pixel_unshuffle_3d`: channels into blocks, the factor - 1 leading frames dropped."""
    b, c, t, h, w = x.shape
    x = x.view(b, c // factor**3, factor, factor, factor, t, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, c // factor**3, t * factor, h * factor, w * factor)
    return x[:, :, factor - 1 :]


class ConvPixelUnshuffleDownSampleLayer3D(nn.Module):
    """A causal conv to out/factor³ channels, then :func:`pixel_unshuffle_3d`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.conv = CausalConv(in_channels, out_channels // factor**3, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, out, T/f, H/f, W/f] (T counted with the f - 1 leading zero frames)."""
        return pixel_unshuffle_3d(self.conv(x), self.factor)


class PixelUnshuffleChannelAveragingDownSampleLayer3D(nn.Module):
    """The parameter-free shortcut: :func:`pixel_unshuffle_3d`, then the mean of each group of channels."""

    def __init__(self, in_channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        self.out_channels, self.factor = out_channels, factor
        self.group_size = in_channels * factor**3 // out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, out, T/f, H/f, W/f]."""
        x = pixel_unshuffle_3d(x, self.factor)
        return x.unflatten(1, (self.out_channels, self.group_size)).mean(dim=2)


class ConvPixelShuffleUpSampleLayer3D(nn.Module):
    """A causal conv to out·factor³ channels, then :func:`pixel_shuffle_3d`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.conv = CausalConv(in_channels, out_channels * factor**3, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, out, T·f - (f - 1), H·f, W·f]."""
        return pixel_shuffle_3d(self.conv(x), self.factor)


class ChannelDuplicatingPixelUnshuffleUpSampleLayer3D(nn.Module):
    """The parameter-free shortcut: each channel repeated, then :func:`pixel_shuffle_3d`."""

    def __init__(self, in_channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.repeats = out_channels * factor**3 // in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, out, T·f - (f - 1), H·f, W·f]."""
        return pixel_shuffle_3d(x.repeat_interleave(self.repeats, dim=1), self.factor)


class Resnet3DBlock(nn.Module):
    """norm, SiLU, causal conv, twice, plus the input (a 1×1×1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = CausalConv(in_channels, out_channels, 3)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = CausalConv(out_channels, out_channels, 3)
        if in_channels != out_channels:
            self.nin_shortcut = CausalConv(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, out, T, H, W]."""
        h = self.conv1(frame_group_norm(x, self.norm1, silu=True))
        h = self.conv2(frame_group_norm(h, self.norm2, silu=True))
        return h + (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x)


class AttnBlock(nn.Module):
    """Single-head attention over all (frame, row, column) positions, causal in that order, plus the input."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.q, self.k, self.v = (CausalConv(channels, channels, 1) for _ in range(3))
        self.proj_out = CausalConv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, C, T, H, W]."""
        h = frame_group_norm(x, self.norm)
        q, k, v = (conv(h).flatten(2).transpose(1, 2)[:, None] for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)[:, 0]
        return self.proj_out(out.transpose(1, 2).reshape(x.shape)) + x


class Downsample2D(nn.Module):
    """Each frame halved by a stride-2 3×3 conv, padded on the right and bottom."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, C, T, H/2, W/2]."""
        frames = F.pad(x.transpose(1, 2).flatten(0, 1), (0, 1, 0, 1))
        return self.conv(frames).unflatten(0, (x.shape[0], x.shape[2])).transpose(1, 2)


class Downsample3D(nn.Module):
    """Frames, rows and columns halved by a causal stride-2 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, C, (T - 1)/2 + 1, H/2, W/2]."""
        return self.conv(x)


class Upsample2D(nn.Module):
    """Each frame doubled (nearest), then a 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, C, T, 2H, 2W]."""
        frames = F.interpolate(x.transpose(1, 2).flatten(0, 1), scale_factor=2.0, mode="nearest")
        return self.conv(frames).unflatten(0, (x.shape[0], x.shape[2])).transpose(1, 2)


class Res3DBlockUpsample(nn.Module):
    """The residual block after a 3D upsampling: conv, norm, SiLU, conv, norm, SiLU of the sum, plus the input."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.conv1 = CausalConv(channels, channels, 3)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv2 = CausalConv(channels, channels, 3)
        self.norm2 = nn.GroupNorm(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, C, T, H, W]."""
        h = frame_group_norm(self.conv1(x), self.norm1, silu=True)
        h = frame_group_norm(self.conv2(h), self.norm2)
        return F.silu(h + x) + x


class Upsample3D(nn.Module):
    """Frames, rows and columns doubled (nearest), then :class:`Res3DBlockUpsample`."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.conv3d = Res3DBlockUpsample(channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, C, 2T, 2H, 2W]."""
        return self.conv3d(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks: list[nn.Module], resample: nn.Module | None) -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList()
    if resample is not None:
        setattr(level, "downsample" if isinstance(resample, (Downsample2D, Downsample3D)) else "upsample", resample)
    return level


def _middle(channels: int, groups: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = Resnet3DBlock(channels, channels, groups)
    mid.attn_1 = AttnBlock(channels, groups)
    mid.block_2 = Resnet3DBlock(channels, channels, groups)
    return mid


def _run_middle(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class VideoEncoder(nn.Module):
    """Pixels [B, 3, T, H, W] -> the posterior's mean and log-variance [B, 2z, (T - 1)/8 + 1, H/16, W/16]."""

    def __init__(
        self,
        z_channels: int,
        ch: int = 32,
        ch_mult: Sequence[int] = (4, 8, 16, 16),
        num_res_blocks: int = 2,
        down_sampling_layer: Sequence[int] = (1, 2),
        groups: int = 32,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv_in = CausalConv(in_channels, ch, 3)
        self.down = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(ch_mult):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(Resnet3DBlock(block_in, ch * mult, groups))
                block_in = ch * mult
            resample = None
            if i != len(ch_mult) - 1:
                resample = Downsample3D(block_in) if i in down_sampling_layer else Downsample2D(block_in)
            self.down.append(_level(blocks, resample))
        self.mid = _middle(block_in, groups)
        self.norm_out = nn.GroupNorm(groups, block_in)
        channels = 4 * z_channels * 2**3
        self.conv_patchify = ConvPixelUnshuffleDownSampleLayer3D(block_in, channels, kernel_size=3, factor=2)
        self.shortcut_pathify = PixelUnshuffleChannelAveragingDownSampleLayer3D(block_in, channels, 2)
        self.shortcut_out = PixelUnshuffleChannelAveragingDownSampleLayer3D(channels, 2 * z_channels, 1)
        self.conv_out = CausalConv(channels, 2 * z_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] -> [B, 2z, T', H/16, W/16]."""
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = frame_group_norm(_run_middle(self.mid, h), self.norm_out, silu=True)
        h = self.conv_patchify(h) + self.shortcut_pathify(h)
        return self.conv_out(h) + self.shortcut_out(h)


class VideoDecoder(nn.Module):
    """Latents [B, z, 3, h, w] -> pixels [B, 3, 17, 16h, 16w] (one chunk)."""

    def __init__(
        self,
        z_channels: int,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        temporal_up_layers: Sequence[int] = (2, 3),
        groups: int = 32,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        channels = 4 * z_channels * 2**3
        self.conv_in = CausalConv(z_channels, channels, 3)
        self.shortcut_in = ChannelDuplicatingPixelUnshuffleUpSampleLayer3D(z_channels, channels, 1)
        self.conv_unpatchify = ConvPixelShuffleUpSampleLayer3D(channels, block_in, kernel_size=3, factor=2)
        self.shortcut_unpathify = ChannelDuplicatingPixelUnshuffleUpSampleLayer3D(channels, block_in, 2)
        self.mid = _middle(block_in, groups)
        levels = []
        for i in reversed(range(len(ch_mult))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(Resnet3DBlock(block_in, ch * ch_mult[i], groups))
                block_in = ch * ch_mult[i]
            resample = None
            if i != 0:
                resample = Upsample3D(block_in, groups) if i in temporal_up_layers else Upsample2D(block_in)
            levels.insert(0, _level(blocks, resample))
        self.up = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(groups, block_in)
        self.conv_out = CausalConv(block_in, out_channels, 3)
        self.temporal_downsample = 2 ** (len(temporal_up_layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[B, z, T, h, w] -> [B, 3, 8T - 7, 16h, 16w]."""
        h = self.conv_in(z) + self.shortcut_in(z)
        h = self.conv_unpatchify(h) + self.shortcut_unpathify(h)
        h = _run_middle(self.mid, h)
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        h = self.conv_out(frame_group_norm(h, self.norm_out, silu=True))
        return h[:, :, self.temporal_downsample - 1 :]


class StepVideoVAE(nn.Module):
    """The Step-Video VAE v2 (``encoder``, ``decoder``): pixels [B, T, 3, H, W] in [-1, 1] <-> latents [B, F, z, h, w].

    Sizes default to the release's (z 64); the tiny flavor shrinks the widths and the norm groups.
    """

    def __init__(
        self,
        z_channels: int = 64,
        encoder_ch: int = 32,
        encoder_ch_mult: Sequence[int] = (4, 8, 16, 16),
        decoder_ch: int = 128,
        decoder_ch_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.z_channels = z_channels
        self.encoder = VideoEncoder(z_channels, encoder_ch, encoder_ch_mult, num_res_blocks, groups=norm_groups)
        self.decoder = VideoDecoder(z_channels, decoder_ch, decoder_ch_mult, num_res_blocks, groups=norm_groups)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights."""
        return self.encoder.conv_in.conv.weight.dtype

    def load_release(self, path: str | Path) -> None:
        """Load the release's ``vae_v2.safetensors`` (its ``decoder.conv_out.*`` is our ``decoder.conv_out.conv.*``)."""
        state = {
            key.replace("decoder.conv_out.", "decoder.conv_out.conv.", 1)
            if key.startswith("decoder.conv_out.") and not key.startswith("decoder.conv_out.conv.") else key: value
            for key, value in load_file(str(path)).items()
        }
        self.load_state_dict(state)

    def encode_moments(
        self, video: torch.Tensor, group: ProcessGroup | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels [B, T, 3, H, W] -> the posterior's (mean, log-variance) [B, F, z, h, w], 17 frames at a time; with
        ``group`` (every rank passing the same clip) split over its ranks, the same moments on every rank."""
        video = video.to(self.dtype)
        if group is None:
            chunks = [self.encoder(chunk.transpose(1, 2)) for chunk in video.split(FRAME_LEN, dim=1)]
            moments = torch.cat(chunks, dim=2)
        elif math.ceil(video.shape[1] / FRAME_LEN) >= dist.get_world_size(group):
            moments = vae_cp.encode_chunks(lambda chunk: self.encoder(chunk.transpose(1, 2)), video, FRAME_LEN,
                                           group, frame_dim=1, latent_dim=2)
        else:
            ops = split_ops(self.encoder)
            moments = torch.cat([vae_cp.encode_split(self.encoder, chunk.transpose(1, 2), ops, TEMPORAL_STRIDE, group)
                                 for chunk in video.split(FRAME_LEN, dim=1)], dim=2)
        mean, logvar = moments.transpose(1, 2).chunk(2, dim=2)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(
        self, video: torch.Tensor, sample: bool = True,
        generator: torch.Generator | Sequence[torch.Generator] | None = None, group: ProcessGroup | None = None,
    ) -> torch.Tensor:
        """Pixels [B, T, 3, H, W] -> latents [B, F, z, h, w]: a posterior sample (the release's) or its mean.

        ``generator``: one for the batch, or one per sample. ``group``: split the encode (see :meth:`encode_moments`).
        """
        mean, logvar = self.encode_moments(video, group)
        if not sample:
            return mean
        return mean + torch.exp(0.5 * logvar) * posterior_noise(mean, generator)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, F, z, h, w] (F a multiple of 3) -> pixels [B, 17·F/3, 3, 16h, 16w], chunk seams blended."""
        if latents.shape[1] % LATENT_LEN:
            raise ValueError(f"{latents.shape[1]} latent frames: the VAE decodes chunks of {LATENT_LEN}")
        chunks = [self.decoder(chunk.transpose(1, 2).to(self.dtype)).transpose(1, 2)
                  for chunk in latents.split(LATENT_LEN, dim=1)]
        return blend_chunks(torch.cat(chunks, dim=1))


def posterior_noise(
    mean: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None
) -> torch.Tensor:
    """Standard normal noise shaped like ``mean``, drawn from one generator or from one per sample."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return torch.cat([torch.randn((1, *mean.shape[1:]), generator=g, device=mean.device, dtype=mean.dtype)
                      for g in generator])


def split_ops(encoder: VideoEncoder) -> list[vae_cp.HaloOp]:
    """The encoder's temporal ops for splitting one chunk's frames over ranks: its causal convs, the patchify conv
    (a kernel-4 stride-2 op with the pixel unshuffle) and its shortcut, and the middle attention (causal over every
    earlier position: the whole prefix)."""
    return [*vae_cp.causal_conv_ops(encoder, CausalConv, skip=[encoder.conv_patchify.conv]),
            vae_cp.HaloOp(encoder.conv_patchify, 4, 2), vae_cp.HaloOp(encoder.shortcut_pathify, 2, 2),
            vae_cp.HaloOp(encoder.mid.attn_1, None)]


def blend_chunks(video: torch.Tensor) -> torch.Tensor:
    """The release's ``mix``: the last frame of each 17-frame chunk and the first of the next blended."""
    video = video.clone()
    front = slice(FRAME_LEN - 1, video.shape[1] - 1, FRAME_LEN)
    back = slice(FRAME_LEN, video.shape[1], FRAME_LEN)
    video[:, back] = video[:, back] * REMAIN_SCALE + video[:, front] * (1 - REMAIN_SCALE)
    video[:, front] = video[:, front] * REMAIN_SCALE + video[:, back] * (1 - REMAIN_SCALE)
    return video
