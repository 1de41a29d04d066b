"""OpenSoraPlan's 3D rotary position embedding: a third of each head's channels for each of (frame, row, column)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _axis_tables(dim: int, positions: torch.Tensor, scale: float, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    freqs = (positions.float() / scale)[:, None] * inv_freq[None, :]
    freqs = torch.cat([freqs, freqs], dim=-1)
    return freqs.cos(), freqs.sin()


class RoPE3D(nn.Module):
    """The (cos, sin) tables [t·h·w, head_dim] of a token grid, frame-major like the tokens; no weights.

    ``interpolation_scale``: (t, h, w) divisors of the positions (the release's ``interpolation_scale_thw``).
    """

    def __init__(self, head_dim: int, interpolation_scale: Sequence[float] = (1.0, 1.0, 1.0), base: float = 10000.0):
        super().__init__()
        if head_dim % 6:
            raise ValueError(f"RoPE3D needs a head dim divisible by 6 (three even thirds), got {head_dim}")
        self.head_dim = head_dim
        self.interpolation_scale = tuple(float(s) for s in interpolation_scale)
        self.base = base

    def forward(self, frames: int, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 (cos, sin), each [frames·height·width, head_dim]: the t, then h, then w thirds."""
        grid = torch.cartesian_prod(
            torch.arange(frames, device=device), torch.arange(height, device=device), torch.arange(width, device=device)
        ).reshape(-1, 3)
        third = self.head_dim // 3
        tables = [_axis_tables(third, grid[:, axis], self.interpolation_scale[axis], self.base) for axis in range(3)]
        return torch.cat([c for c, _ in tables], dim=-1), torch.cat([s for _, s in tables], dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, S, H, D] rotated by the tables [S, D], each third of D on its own axis (as the release's RoPE3D)."""
    cos, sin = (t.to(x.dtype)[None, :, None, :] for t in (cos, sin))
    parts = [
        xp * cp + _rotate_half(xp) * sp
        for xp, cp, sp in zip(x.chunk(3, dim=-1), cos.chunk(3, dim=-1), sin.chunk(3, dim=-1))
    ]
    return torch.cat(parts, dim=-1)
