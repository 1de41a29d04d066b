"""CustomDiT: a video diffusion transformer assembled from diffusers' Wan building blocks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from diffusers.models.transformers.transformer_wan import (
    WanRotaryPosEmbed,
    WanTimeTextImageEmbedding,
    WanTransformerBlock,
)
from torch import nn


class CustomDiT(nn.Module):
    """Patch embedding + timestep/text conditioning + ``num_layers`` Wan blocks + an adaLN output head.

    Latents [B, in_channels, F, H, W] become F/pt × H/ph × W/pw tokens of width ``num_heads × head_dim``;
    the output has the latents' shape with ``out_channels`` channels (the predicted velocity).
    """

    def __init__(
        self,
        num_layers: int = 30,
        num_heads: int = 12,
        head_dim: int = 128,
        patch_size: Sequence[int] = (1, 2, 2),
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 8960,
        rope_max_seq_len: int = 1024,
    ) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.out_channels = out_channels
        hidden = num_heads * head_dim
        self.rope = WanRotaryPosEmbed(head_dim, self.patch_size, rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(in_channels, hidden, kernel_size=self.patch_size, stride=self.patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=hidden, time_freq_dim=freq_dim, time_proj_dim=hidden * 6, text_embed_dim=text_dim
        )
        self.blocks = nn.ModuleList(WanTransformerBlock(hidden, ffn_dim, num_heads) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(hidden, elementwise_affine=False)
        self.proj_out = nn.Linear(hidden, out_channels * math.prod(self.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, hidden) / hidden**0.5)

    def forward(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """Predict from noised latents [B, C, F, H, W], timesteps [B] and text embeddings [B, L, text_dim]."""
        temb, timestep_proj, text, _ = self.condition_embedder(timestep, encoder_hidden_states)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        rotary_emb = self.rope(hidden_states)
        tokens = self.patch_embedding(hidden_states)
        frames, height, width = tokens.shape[2:]
        tokens = tokens.flatten(2).transpose(1, 2).contiguous()  # patchify: [B, F*H*W, hidden]
        for block in self.blocks:
            tokens = block(tokens, text, timestep_proj, rotary_emb)
        shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        tokens = self.proj_out(self.norm_out(tokens) * (1 + scale) + shift)
        return self.unpatchify(tokens, frames, height, width)

    def unpatchify(self, tokens: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """[B, F*H*W, pt*ph*pw*C] -> [B, C, F*pt, H*ph, W*pw]."""
        pt, ph, pw = self.patch_size
        out = tokens.view(tokens.shape[0], frames, height, width, pt, ph, pw, self.out_channels)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(
            tokens.shape[0], self.out_channels, frames * pt, height * ph, width * pw
        )
