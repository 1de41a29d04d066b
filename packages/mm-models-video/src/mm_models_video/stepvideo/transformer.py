"""StepVideoModel: the Step-Video DiT of stepfun-ai's releases, with their state-dict names and config keys.

Latents are laid out frames before channels ([B, F, C, H, W]); each frame is cut into patches (1×1 in the
releases), the tokens of all frames attend to each other with RMSNorm on q and k and a 3D rotary embedding over
(frame, row, column) whose channels split as ``rope_ch_split``; adaLN-single modulates every block from the
timestep (a fraction in [0, 1], scaled by 1000 inside, as the release does); cross-attention reads the CLIP
features projected and put before the projected LLM features. TI2V (``use_additional_conditions``) concatenates
the image condition on the channel axis and adds a motion-score embedding to the timestep's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import PixArtAlphaTextProjection, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import RMSNorm
from torch import nn

from mm_parallel import attention

# The release's timestep input is a fraction of the way from noise (0) to data (1); adaLN-single scales it.
TIME_STEP_RESCALE = 1000.0
ROPE_BASE = 1.0e4


def default_rope_split(head_dim: int) -> list[int]:
    """The release's split of a head's channels over (frame, height, width): [64, 32, 32] for 128."""
    return [head_dim // 2, head_dim // 4, head_dim - head_dim // 2 - head_dim // 4]


def rotate_half(x: torch.Tensor, split: Sequence[int]) -> torch.Tensor:
    """Each channel segment of ``split`` rotated by half (the release's RoPE1D.rotate_half per axis)."""
    out = []
    for part in torch.split(x, list(split), dim=-1):
        first, second = part.chunk(2, dim=-1)
        out.append(torch.cat((-second, first), dim=-1))
    return torch.cat(out, dim=-1)


class RoPE3D(nn.Module):
    """The cos / sin tables [1, F·H·W, 1, head_dim] of the tokens of a (frames, height, width) grid.

    Each axis rotates its own channel segment (``split``) by its position, frequencies base^(-2i/D) of the
    segment's width D; positions run frame-major, then row, then column, as the tokens do.
    """

    def __init__(self, split: Sequence[int]) -> None:
        super().__init__()
        self.split = list(split)

    def forward(self, grid: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The tables for the token grid ``grid`` = (frames, height, width), in float32 on ``device``."""
        axes = [torch.arange(n, device=device, dtype=torch.float32) for n in grid]
        positions = torch.cartesian_prod(*axes).view(-1, 3)
        angles = []
        for axis, width in enumerate(self.split):
            inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, width, 2, device=device, dtype=torch.float32) / width))
            freqs = positions[:, axis, None] * inv_freq[None]
            angles.append(torch.cat((freqs, freqs), dim=-1))
        angle = torch.cat(angles, dim=-1)[None, :, None, :]
        return angle.cos(), angle.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, split: Sequence[int]) -> torch.Tensor:
    """x [B, S, heads, head_dim] rotated by the tables (computed in float32, returned in x's dtype)."""
    x32 = x.float()
    return (x32 * cos + rotate_half(x32, split) * sin).type_as(x)


class SelfAttention(nn.Module):
    """Self-attention over all tokens: fused ``wqkv`` laid out per head (q, k, v of head 0, then head 1 ...)."""

    def __init__(self, dim: int, head_dim: int, rope_split: Sequence[int]) -> None:
        super().__init__()
        self.head_dim, self.heads = head_dim, dim // head_dim
        self.rope_split = list(rope_split)
        self.wqkv = nn.Linear(dim, dim * 3, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps=1e-6, elementwise_affine=True)
        self.k_norm = RMSNorm(head_dim, eps=1e-6, elementwise_affine=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, S, D] (this rank's shard under CP) -> [B, S, D]; attention through ``mm_parallel.attention``."""
        qkv = self.wqkv(x).unflatten(-1, (self.heads, 3 * self.head_dim))
        q, k, v = qkv.split(self.head_dim, dim=-1)
        q = apply_rope(self.q_norm(q), cos, sin, self.rope_split)
        k = apply_rope(self.k_norm(k), cos, sin, self.rope_split)
        out = attention(q, k, v.contiguous(), layout="bshd")
        return self.wo(out.flatten(2).type_as(x))


class CrossAttention(nn.Module):
    """Cross-attention to the text: ``wq``, fused ``wkv`` laid out per head (k, v of head 0, then head 1 ...)."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.head_dim, self.heads = head_dim, dim // head_dim
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wkv = nn.Linear(dim, dim * 2, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps=1e-6, elementwise_affine=True)
        self.k_norm = RMSNorm(head_dim, eps=1e-6, elementwise_affine=True)

    def forward(self, x: torch.Tensor, context: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x [B, S, D] attends to context [B, L, D] where ``keep`` [B, L] is nonzero."""
        q = self.q_norm(self.wq(x).unflatten(-1, (self.heads, self.head_dim)))
        k, v = self.wkv(context).unflatten(-1, (self.heads, 2 * self.head_dim)).split(self.head_dim, dim=-1)
        k = self.k_norm(k)
        mask = (keep != 0)[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        ).transpose(1, 2)
        return self.wo(out.flatten(2).type_as(x))


class StepVideoTransformerBlock(nn.Module):
    """Modulated self-attention, cross-attention, modulated GELU(tanh) feed-forward (the release's block)."""

    def __init__(self, dim: int, head_dim: int, rope_split: Sequence[int], norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn1 = SelfAttention(dim, head_dim, rope_split)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn2 = CrossAttention(dim, head_dim)
        self.ff = FeedForward(dim, dim_out=dim, activation_fn="gelu-approximate", bias=False)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(
        self,
        hidden: torch.Tensor,
        context: torch.Tensor,
        keep: torch.Tensor,
        modulation: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:
        """hidden [B, S, D], context [B, L, D], keep [B, L], modulation [B, 6·D] (adaLN-single), RoPE tables."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + modulation.reshape(-1, 6, self.dim)
        ).chunk(6, dim=1)
        attn = self.attn1(self.norm1(hidden) * (1 + scale_msa) + shift_msa, cos, sin)
        hidden = gate_msa * attn + hidden
        hidden = self.attn2(hidden, context, keep) + hidden
        ff = self.ff(self.norm2(hidden) * (1 + scale_mlp) + shift_mlp)
        return gate_mlp * ff + hidden


class PatchEmbed(nn.Module):
    """Each frame's patches as tokens: a strided Conv2d (``proj``)."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, H/p · W/p, D]."""
        return self.proj(latent).flatten(2).transpose(1, 2)


class CombinedTimestepEmbedding(nn.Module):
    """The timestep's sinusoidal embedding through an MLP, plus the motion score's for TI2V."""

    def __init__(self, dim: int, use_additional_conditions: bool) -> None:
        super().__init__()
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=dim)
        self.use_additional_conditions = use_additional_conditions
        if use_additional_conditions:
            self.additional_condition_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)
            self.motion_score_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=dim)

    def forward(self, timestep: torch.Tensor, motion_score: torch.Tensor | None = None) -> torch.Tensor:
        """[B] timesteps (already scaled) and, for TI2V, [B] motion scores -> [B, D]."""
        dtype = self.timestep_embedder.linear_1.weight.dtype
        emb = self.timestep_embedder(self.time_proj(timestep).to(dtype))
        if self.use_additional_conditions:
            if motion_score is None:
                raise ValueError("StepVideo TI2V needs a motion score")
            emb = emb + self.motion_score_embedder(self.additional_condition_proj(motion_score.flatten()).to(dtype))
        return emb


class AdaLayerNormSingle(nn.Module):
    """adaLN-single: one [B, 6·D] modulation for every block from the timestep (×1000) embedding."""

    def __init__(self, dim: int, use_additional_conditions: bool) -> None:
        super().__init__()
        self.emb = CombinedTimestepEmbedding(dim, use_additional_conditions)
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, 6 * dim, bias=True)

    def forward(
        self, timestep: torch.Tensor, motion_score: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the blocks' modulation [B, 6·D], the embedded timestep [B, D] for the output modulation)."""
        embedded = self.emb(timestep * TIME_STEP_RESCALE, motion_score)
        return self.linear(self.silu(embedded)), embedded


class StepVideoModel(ModelMixin, ConfigMixin):
    """The Step-Video transformer; loads the releases' ``transformer/`` folders with ``from_pretrained``.

    ``forward`` is the release's; :meth:`embed`, the blocks and :meth:`unembed` are its three pieces (what a
    pipeline stage runs). ``rope_ch_split`` (not in the releases' config.json) defaults to their [64, 32, 32].
    """

    _no_split_modules = ["StepVideoTransformerBlock", "PatchEmbed"]

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 48,
        attention_head_dim: int = 128,
        in_channels: int = 64,
        out_channels: int | None = 64,
        num_layers: int = 48,
        dropout: float = 0.0,
        patch_size: int = 1,
        norm_type: str = "ada_norm_single",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        use_additional_conditions: bool | None = False,
        caption_channels: int | Sequence[int] | None = (6144, 1024),
        attention_type: str | None = "parallel",
        rope_ch_split: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        self.inner_dim = dim
        self.out_channels = in_channels if out_channels is None else out_channels
        self.patch_size = patch_size
        split = list(rope_ch_split) if rope_ch_split else default_rope_split(attention_head_dim)
        if sum(split) != attention_head_dim or any(n % 2 for n in split):
            raise ValueError(f"rope_ch_split {split} must be even widths adding up to attention_head_dim "
                             f"{attention_head_dim}")
        patch_in = in_channels * 2 if use_additional_conditions else in_channels
        self.pos_embed = PatchEmbed(patch_size, patch_in, dim)
        self.rope = RoPE3D(split)
        self.transformer_blocks = nn.ModuleList(
            StepVideoTransformerBlock(dim, attention_head_dim, split) for _ in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, patch_size * patch_size * self.out_channels)
        self.adaln_single = AdaLayerNormSingle(dim, bool(use_additional_conditions))
        if isinstance(caption_channels, int):
            caption_channel = caption_channels
        else:
            caption_channel, clip_channel = caption_channels
            self.clip_projection = nn.Linear(clip_channel, dim)
        self.caption_norm = nn.LayerNorm(caption_channel, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.caption_projection = PixArtAlphaTextProjection(in_features=caption_channel, hidden_size=dim)

    def token_grid(self, latents: torch.Tensor) -> tuple[int, int, int]:
        """(frames, height, width) of the token grid of latents [B, F, C, H, W]."""
        return latents.shape[1], latents.shape[3] // self.patch_size, latents.shape[4] // self.patch_size

    def embed(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        encoder_hidden_states_2: torch.Tensor | None = None,
        condition_hidden_states: torch.Tensor | None = None,
        motion_score: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Everything before the blocks: ``(tokens, context, keep, modulation, embedded_timestep, cos, sin)``.

        ``encoder_attention_mask`` [B, L_clip + L_llm] covers the CLIP tokens (first) and the LLM tokens, as the
        release's caption server pads it; ``timestep`` [B] is in [0, 1].
        """
        batch, frames = hidden_states.shape[:2]
        if condition_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, condition_hidden_states], dim=2)
        tokens = self.pos_embed(hidden_states.flatten(0, 1).to(self.pos_embed.proj.weight.dtype))
        tokens = tokens.unflatten(0, (batch, frames)).flatten(1, 2)
        if motion_score is not None:
            motion_score = torch.as_tensor(motion_score, device=tokens.device, dtype=tokens.dtype).expand(batch)
        modulation, embedded = self.adaln_single(timestep.to(tokens.device), motion_score)
        context = self.caption_projection(self.caption_norm(encoder_hidden_states.to(tokens.dtype)))
        if encoder_hidden_states_2 is not None and hasattr(self, "clip_projection"):
            clip = self.clip_projection(encoder_hidden_states_2.to(tokens.dtype))
            context = torch.cat([clip, context], dim=1)
        keep = encoder_attention_mask.to(tokens.dtype)
        if keep.shape[1] != context.shape[1]:
            raise ValueError(f"encoder_attention_mask covers {keep.shape[1]} text tokens, the features have "
                             f"{context.shape[1]} (CLIP's first, then the LLM's)")
        cos, sin = self.rope(self.token_grid(hidden_states), tokens.device)
        return tokens, context, keep, modulation, embedded, cos, sin

    def unembed(self, hidden: torch.Tensor, embedded_timestep: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """Everything after the blocks: modulated output norm, projection, unpatchify -> [B, F, C, H, W]."""
        frames, height, width = grid
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        hidden = self.proj_out(self.norm_out(hidden) * (1 + scale) + shift)
        p, c = self.patch_size, self.out_channels
        hidden = hidden.reshape(-1, frames, height, width, p, p, c)
        return hidden.permute(0, 1, 6, 2, 4, 3, 5).reshape(-1, frames, c, height * p, width * p)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_2: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        condition_hidden_states: torch.Tensor | None = None,
        motion_score: torch.Tensor | float | None = None,
        return_dict: bool = True,
    ) -> dict[str, torch.Tensor] | torch.Tensor:
        """The predicted velocity [B, F, C, H, W] for latents ``hidden_states`` [B, F, C, H, W] at ``timestep``."""
        tokens, context, keep, modulation, embedded, cos, sin = self.embed(
            hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, encoder_hidden_states_2,
            condition_hidden_states, motion_score,
        )
        for block in self.transformer_blocks:
            tokens = block(tokens, context, keep, modulation, cos, sin)
        output = self.unembed(tokens, embedded, self.token_grid(hidden_states))
        return {"x": output} if return_dict else output
