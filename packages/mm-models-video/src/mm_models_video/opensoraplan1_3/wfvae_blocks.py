"""The layers of WF-VAE: causal 3D convolutions, per-frame 2D ones, Haar wavelets, resnet and attention blocks.

Names and weights are the Open-Sora-Plan release's (``causalvideovae/model/modules``), so its checkpoints load
as they are. Video tensors are [B, C, T, H, W]; "causal" means the first frame is repeated in front instead of
zero padding, so frame t never sees a later one. In chunked (tiled) mode the layers that look back in time keep
the frames the next chunk needs (``cache``), as the release's ``enable_cached``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def swish(x: torch.Tensor) -> torch.Tensor:
    """x · sigmoid(x), the VAE's nonlinearity."""
    return x * torch.sigmoid(x)


def per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D ``module`` to each frame of x [B, C, T, H, W]."""
    batch, frames = x.shape[0], x.shape[2]
    out = module(x.transpose(1, 2).flatten(0, 1))
    return out.unflatten(0, (batch, frames)).transpose(1, 2)


class CausalConv3d(nn.Module):
    """A 3D convolution (``conv``) whose temporal padding repeats the first frame in front.

    ``chunked``: after the first chunk the padding is the frames the previous chunk left in ``cache``, leaving out
    its last ``cache_offset`` frames (the overlap the next chunk computes again).
    """

    def __init__(self, chan_in: int, chan_out: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        self.time_kernel_size = kernel_size
        self.conv = nn.Conv3d(chan_in, chan_out, kernel_size, stride=stride, padding=(0, padding, padding), bias=bias)
        self.chunked, self.first_chunk, self.cache_offset = False, True, 0
        self.cache: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> the convolution of the first frame repeated kernel - 1 times (or the cache), then x."""
        if self.chunked and not self.first_chunk:
            pad = self.cache.pop(0)
        else:
            pad = x[:, :, :1].expand(-1, -1, self.time_kernel_size - 1, -1, -1)
        x = torch.cat([pad, x], dim=2)
        if self.chunked:
            back, stride = self.time_kernel_size - 1, self.conv.stride[0]
            keep = -(-back // stride) if back // stride else 0
            kept = x[:, :, : x.shape[2] - self.cache_offset] if self.cache_offset else x
            self.cache.append(kept[:, :, kept.shape[2] - keep:].clone() if keep else kept[:, :, :0])
        return self.conv(x)


class Conv2d(nn.Conv2d):
    """A 2D convolution applied to each frame of a video."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per frame when x is a video, else as nn.Conv2d."""
        return per_frame(super().forward, x) if x.ndim == 5 else super().forward(x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of [B, C, ...] (the release's ``layernorm``, MindSpeed-MM's ``aelayernorm``)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize each position's channel vector."""
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


NORM_TYPES = ("groupnorm", "layernorm", "aelayernorm")


def normalize(channels: int, norm_type: str) -> nn.Module:
    """GroupNorm of 32 groups or the channel LayerNorm, as ``norm_type`` says (eps 1e-6)."""
    if norm_type == "groupnorm":
        return nn.GroupNorm(32, channels, eps=1e-6, affine=True)
    if norm_type in ("layernorm", "aelayernorm"):
        return ChannelLayerNorm(channels)
    raise ValueError(f"WF-VAE norm_type must be one of {', '.join(NORM_TYPES)}, got {norm_type!r}")


class ResnetBlock2D(nn.Module):
    """norm → swish → conv → norm → swish → dropout → conv, plus the (1×1-projected) input; per frame."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, norm_type: str) -> None:
        super().__init__()
        self.norm1 = normalize(in_channels, norm_type)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels, norm_type)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per frame of x [B, C, T, H, W]."""
        return per_frame(self._forward, x)


class ResnetBlock3D(nn.Module):
    """The resnet block with causal 3D convolutions."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, norm_type: str) -> None:
        super().__init__()
        self.norm1 = normalize(in_channels, norm_type)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels, norm_type)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = CausalConv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, T, H, W] -> [B, out, T, H, W]."""
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock3DFix(nn.Module):
    """Single-head spatial self-attention within each frame, residual (1×1 causal convs for q, k, v, out)."""

    def __init__(self, in_channels: int, norm_type: str) -> None:
        super().__init__()
        self.norm = normalize(in_channels, norm_type)
        self.q, self.k, self.v, self.proj_out = (CausalConv3d(in_channels, in_channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, T, H, W] plus its attention over each frame's H·W positions."""
        h = self.norm(x)
        b, c, t, height, width = x.shape
        q, k, v = (proj(h).permute(0, 2, 3, 4, 1).reshape(b * t, 1, height * width, c)
                   for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.reshape(b, t, height, width, c).permute(0, 4, 1, 2, 3)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Per frame: pad right and bottom by one, 3×3 convolution of stride 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, out, T, H/2, W/2]."""
        return per_frame(lambda f: self.conv(F.pad(f, (0, 1, 0, 1))), x)


class Upsample(nn.Module):
    """Per frame: nearest 2× upsampling, 3×3 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, out, T, 2H, 2W]."""
        return per_frame(lambda f: self.conv(F.interpolate(f, scale_factor=2.0, mode="nearest")), x)


class Spatial2xTime2x3DDownsample(nn.Module):
    """Pad right and bottom by one, causal 3×3×3 convolution of stride 2: halves time (first frame kept) and space."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halve time (keeping the first frame) and space."""
        return self.conv(F.pad(x, (0, 1, 0, 1, 0, 0)))


class Spatial2xTime2x3DUpsample(nn.Module):
    """Frames after the first interpolated 2× in time, all 2× in space (trilinear), then a causal convolution.

    ``chunked``: each chunk keeps a frame for the next one's temporal interpolation (``cache``).
    """

    def __init__(self, in_channels: int, out_channels: int, t_interpolation: str = "trilinear") -> None:
        super().__init__()
        self.t_interpolation = t_interpolation
        self.conv = CausalConv3d(in_channels, out_channels, 3, padding=1)
        self.chunked = False
        self.cache: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, 1+k, H, W] -> [B, out, 1+2k, 2H, 2W] (a later chunk of k frames: 2k)."""
        if self.chunked and self.cache:
            x = torch.cat([self.cache.pop(0), x], dim=2)
            self.cache.append(x[:, :, -2:-1].clone())
            x = F.interpolate(x, scale_factor=(2, 1, 1), mode=self.t_interpolation)[:, :, 2:]
            return self.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="trilinear"))
        if self.chunked:
            self.cache.append(x[:, :, -1:].clone())
        if x.shape[2] > 1:
            first, rest = x[:, :, :1], x[:, :, 1:]
            rest = F.interpolate(rest, scale_factor=(2, 1, 1), mode=self.t_interpolation)
            rest = F.interpolate(rest, scale_factor=(1, 2, 2), mode="trilinear")
            x = torch.cat([F.interpolate(first, scale_factor=(1, 2, 2), mode="trilinear"), rest], dim=2)
        else:
            x = F.interpolate(x, scale_factor=(1, 2, 2), mode="trilinear")
        return self.conv(x)


def _haar_3d_kernels() -> list[torch.Tensor]:
    """The eight 2×2×2 Haar kernels (time, height, width), in the release's subband order, scaled 0.3536."""
    low, high = torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])
    kernels = []
    for t in (low, high):
        for h in (low, high):
            for w in (low, high):
                kernels.append(torch.einsum("i,j,k->ijk", t, h, w) * 0.3536)
    return kernels


HAAR_3D = ("h", "g", "hh", "gh", "h_v", "g_v", "hh_v", "gh_v")


class HaarWaveletTransform3D(nn.Module):
    """3D Haar analysis: [B, C, 1+2k, H, W] -> the eight subbands [B, 8·C, 1+k, H/2, W/2] (fixed causal convs)."""

    def __init__(self) -> None:
        super().__init__()
        for name, kernel in zip(HAAR_3D, _haar_3d_kernels()):
            conv = CausalConv3d(1, 1, 2, stride=2, bias=False)
            conv.conv.weight.data = kernel.view(1, 1, 2, 2, 2)
            setattr(self, f"{name}_conv", conv.requires_grad_(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each channel transformed alone; subbands outer, channels inner."""
        b = x.shape[0]
        flat = x.flatten(0, 1)[:, None]
        bands = [getattr(self, f"{name}_conv")(flat) for name in HAAR_3D]
        return torch.cat([band.reshape(b, -1, *band.shape[2:]) for band in bands], dim=1)


class InverseHaarWaveletTransform3D(nn.Module):
    """3D Haar synthesis: [B, 8·C, 1+k, H, W] -> [B, C, 1+2k, 2H, 2W] (the padded first frame dropped; in a later
    chunk, ``chunked``, none is: [B, C, 2k, 2H, 2W])."""

    def __init__(self) -> None:
        super().__init__()
        for name, kernel in zip(HAAR_3D, _haar_3d_kernels()):
            self.register_buffer(name, kernel.view(1, 1, 2, 2, 2))
        self.chunked, self.first_chunk = False, True

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        """The sum of each subband's transposed convolution, without its first frame (unless a later chunk)."""
        b = coeffs.shape[0]
        out = sum(
            F.conv_transpose3d(band.flatten(0, 1)[:, None], getattr(self, name), stride=2)
            for name, band in zip(HAAR_3D, coeffs.chunk(8, dim=1))
        )
        if not self.chunked or self.first_chunk:
            out = out[:, :, 1:]
        return out.reshape(b, -1, *out.shape[2:])


HAAR_2D = ("aa", "ad", "da", "dd")


def _haar_2d_kernels() -> list[torch.Tensor]:
    low, high = torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])
    return [torch.outer(a, b).view(1, 1, 2, 2) / 2 for a, b in ((low, low), (high, low), (low, high), (high, high))]


class HaarWaveletTransform2D(nn.Module):
    """Per-frame 2D Haar analysis: [B, C, T, H, W] -> [B, 4·C, T, H/2, W/2]."""

    def __init__(self) -> None:
        super().__init__()
        for name, kernel in zip(HAAR_2D, _haar_2d_kernels()):
            self.register_buffer(name, kernel)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        flat = x.flatten(0, 1)[:, None]
        bands = [F.conv2d(flat, getattr(self, name), stride=2) for name in HAAR_2D]
        return torch.cat([band.reshape(b, -1, *band.shape[2:]) for band in bands], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each frame and channel transformed alone; subbands outer, channels inner."""
        return per_frame(self._forward, x)


class InverseHaarWaveletTransform2D(nn.Module):
    """Per-frame 2D Haar synthesis: [B, 4·C, T, H, W] -> [B, C, T, 2H, 2W]."""

    def __init__(self) -> None:
        super().__init__()
        for name, kernel in zip(HAAR_2D, _haar_2d_kernels()):
            self.register_buffer(name, kernel)

    def _forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        b = coeffs.shape[0]
        out = sum(
            F.conv_transpose2d(band.flatten(0, 1)[:, None], getattr(self, name), stride=2)
            for name, band in zip(HAAR_2D, coeffs.chunk(4, dim=1))
        )
        return out.reshape(b, -1, *out.shape[2:])

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Each frame synthesized alone."""
        return per_frame(self._forward, coeffs)
