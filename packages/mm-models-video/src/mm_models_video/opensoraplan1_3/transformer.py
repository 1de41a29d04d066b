"""OpenSoraPlan 1.3's sparse video DiT (MindSpeed-MM's ``videoditsparse``), with the release's state-dict names.

Per-frame 2×2 patches, 3D RoPE, adaLN-single modulation, mT5 text through a caption projection and, on the middle
layers, Skiparse self-attention (strided and grouped token subsets alternating). ``OpenSoraT2V`` loads the
Open-Sora-Plan v1.3 ``transformer/`` folder (config.json + safetensors) with ``from_pretrained``; its forward is
``embed`` → each block through ``run_block`` → ``unpatchify_output``, the pieces pipeline parallelism cuts at.
Tensors are batch-first ([B, S, D]); the release's sequence-first layout computes the same.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import PatchEmbed, PixArtAlphaTextProjection
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn

from mm_models_video.opensoraplan1_3.rope import RoPE3D, apply_rope
from mm_models_video.opensoraplan1_3.skiparse import MASKED_BIAS, skiparse_attention, skiparse_attention_at
from mm_parallel import attention
from mm_parallel.context import ContextParallel, active_scope
from mm_parallel.sequence import gather_sequence
from mm_parallel.ulysses import heads_to_sequence, sequence_to_heads


class Carry(NamedTuple):
    """What passes through the blocks (and between pipeline stages): the tokens and everything they attend to.

    ``video_bias`` is [B, S] (0 keep, -10000 masked) or [B, 0] when every token is kept; ``prompt_bias`` [B, L].
    """

    hidden: torch.Tensor
    prompt: torch.Tensor
    timestep: torch.Tensor
    embedded_timestep: torch.Tensor
    prompt_bias: torch.Tensor
    video_bias: torch.Tensor
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor


def sparse_layers(num_layers: int, sparse1d: bool) -> list[bool]:
    """Which layers run Skiparse: all but the first two and the last two (the release's ``1 < i < 30`` of 32)."""
    return [sparse1d and 1 < i < num_layers - 2 for i in range(num_layers)]


def _context_parallel() -> ContextParallel | None:
    """The context-parallel groups of the forward running now, once the sequence is split; None without."""
    scope = active_scope()
    if scope is None or scope.length is None or scope.cp.size == 1:
        return None
    return scope.cp


class _UlyssesHeads:
    """Under Ulysses: this rank's share of the heads over the whole (true-length) sequence, and back."""

    def __init__(self, cp: ContextParallel | None) -> None:
        self.cp, self.length = cp, active_scope().length if cp is not None else None

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """[B, s/n, H, D] shard -> [B, S, H/n, D] (padding dropped)."""
        if self.cp is None:
            return x
        whole = heads_to_sequence(x.transpose(1, 2), self.cp.ulysses_group).transpose(1, 2)
        self.padded = whole.shape[1]
        return whole[:, : self.length]

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`gather`."""
        if self.cp is None:
            return x
        x = F.pad(x, (0, 0, 0, 0, 0, self.padded - x.shape[1]))
        return sequence_to_heads(x.transpose(1, 2), self.cp.ulysses_group).transpose(1, 2)


def _ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cp: ContextParallel, sparse_n: int,
                    grouped: bool, video_bias: torch.Tensor | None) -> torch.Tensor:
    """Under ring or USP: dense unmasked layers run ``mm_parallel.attention``; Skiparse (or masked) ones gather the
    whole sequence's keys and values over the cp group, each rank attending from its own queries."""
    if sparse_n == 1 and video_bias is None:
        return attention(q, k, v, layout="bshd")
    length = active_scope().length
    positions = cp.layout(length).positions(cp.rank).to(q.device)
    k, v = gather_sequence(k, 1, cp, length), gather_sequence(v, 1, cp, length)
    return skiparse_attention_at(q, positions, k, v, sparse_n, grouped, video_bias)


class SkiparseSelfAttention:
    """diffusers Attention processor of a block's self-attention (attn1): RoPE, then Skiparse or dense attention.

    Under Ulysses context parallelism q, k, v trade their sequence shard for a share of the heads first, so the
    token subsets span the whole sequence; under ring and USP the dense layers run ``mm_parallel.attention`` and
    the Skiparse ones attend from the rank's queries to the gathered keys and values.
    """

    def __init__(self, sparse_n: int, grouped: bool) -> None:
        self.sparse_n, self.grouped = sparse_n, grouped

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        video_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, S, D] -> [B, S, D]; ``video_bias`` [B, S] additive key bias over the whole sequence, or None."""
        q, k, v = (proj(hidden_states).unflatten(-1, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        cp = _context_parallel()
        if cp is not None and cp.ulysses_size != cp.size:
            out = _ring_attention(q, k, v, cp, self.sparse_n, self.grouped, video_bias)
        else:
            heads = _UlyssesHeads(cp)
            q, k, v = heads.gather(q), heads.gather(k), heads.gather(v)
            out = heads.scatter(skiparse_attention(q, k, v, self.sparse_n, self.grouped, video_bias))
        out = out.flatten(2).type_as(hidden_states)
        return attn.to_out[1](attn.to_out[0](out))


class PromptCrossAttention:
    """diffusers Attention processor of a block's cross-attention (attn2) to the projected prompt, padding masked.

    Skiparse folds the queries into subsets and repeats the prompt for each, which attends exactly as here.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, S, D] attending to the prompt [B, L, D]; ``attention_mask`` the additive key bias [B, L]."""
        q = attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        k, v = (proj(encoder_hidden_states).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
                for proj in (attn.to_k, attn.to_v))
        mask = attention_mask[:, None, None, :].to(q.dtype) if attention_mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


class BasicTransformerBlock(nn.Module):
    """One layer: modulated self-attention, unnormalized cross-attention to the prompt, modulated feed-forward."""

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        cross_attention_dim: int,
        dropout: float = 0.0,
        activation_fn: str = "gelu-approximate",
        attention_bias: bool = True,
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        sparse_n: int = 1,
        sparse_group: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
        self.attn1 = Attention(
            query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
            bias=attention_bias, out_bias=True, processor=SkiparseSelfAttention(sparse_n, sparse_group),
        )
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
        self.attn2 = Attention(
            query_dim=dim, cross_attention_dim=cross_attention_dim, heads=num_attention_heads,
            dim_head=attention_head_dim, dropout=dropout, bias=attention_bias, out_bias=True,
            processor=PromptCrossAttention(),
        )
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn, bias=True)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(
        self,
        hidden: torch.Tensor,
        prompt: torch.Tensor,
        timestep: torch.Tensor,
        prompt_bias: torch.Tensor,
        video_bias: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """hidden [B, S, D]; timestep [B, 6·D] (adaLN-single); prompt [B, L, D]."""
        modulation = self.scale_shift_table[None] + timestep.reshape(hidden.shape[0], 6, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=1)
        normed = self.norm1(hidden) * (1 + scale_msa) + shift_msa
        hidden = hidden + gate_msa * self.attn1(normed, rope=rope, video_bias=video_bias)
        hidden = hidden + self.attn2(hidden, encoder_hidden_states=prompt, attention_mask=prompt_bias)
        normed = self.norm2(hidden) * (1 + scale_mlp) + shift_mlp
        return hidden + gate_mlp * self.ff(normed)


def run_block(block: BasicTransformerBlock, carry: Carry | tuple[torch.Tensor, ...]) -> Carry:
    """One block on the carry's tokens; the rest passes on unchanged."""
    carry = Carry(*carry)
    video_bias = carry.video_bias if carry.video_bias.shape[1] else None
    hidden = block(
        carry.hidden, carry.prompt, carry.timestep, carry.prompt_bias, video_bias, (carry.rope_cos, carry.rope_sin)
    )
    return carry._replace(hidden=hidden)


class OpenSoraT2V(ModelMixin, ConfigMixin):
    """The OpenSoraPlan 1.3 text-to-video transformer (``OpenSoraT2V_v1_3``); config keys as the release's."""

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 24,
        attention_head_dim: int = 96,
        in_channels: int = 8,
        out_channels: int | None = None,
        num_layers: int = 32,
        dropout: float = 0.0,
        cross_attention_dim: int = 2304,
        attention_bias: bool = True,
        patch_size: int = 2,
        patch_size_t: int = 1,
        activation_fn: str = "gelu-approximate",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        caption_channels: int = 4096,
        interpolation_scale_h: float = 1.0,
        interpolation_scale_w: float = 1.0,
        interpolation_scale_t: float = 1.0,
        sparse1d: bool = False,
        sparse_n: int = 2,
    ) -> None:
        super().__init__()
        if patch_size_t != 1:
            raise ValueError(f"OpenSoraPlan 1.3 patches each frame (patch_size_t 1), got patch_size_t {patch_size_t}")
        inner = num_attention_heads * attention_head_dim
        self.out_channels = out_channels or in_channels
        self.caption_projection = PixArtAlphaTextProjection(in_features=caption_channels, hidden_size=inner)
        self.pos_embed = PatchEmbed(
            patch_size=patch_size, in_channels=in_channels, embed_dim=inner, pos_embed_type=None
        )
        self.rope = RoPE3D(attention_head_dim, (interpolation_scale_t, interpolation_scale_h, interpolation_scale_w))
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    inner, num_attention_heads, attention_head_dim, cross_attention_dim, dropout=dropout,
                    activation_fn=activation_fn, attention_bias=attention_bias,
                    norm_elementwise_affine=norm_elementwise_affine, norm_eps=norm_eps,
                    sparse_n=sparse_n if sparse else 1, sparse_group=i % 2 == 1,
                )
                for i, sparse in enumerate(sparse_layers(num_layers, sparse1d))
            ]
        )
        self.norm_out = nn.LayerNorm(inner, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, inner) / inner**0.5)
        self.proj_out = nn.Linear(inner, patch_size_t * patch_size * patch_size * self.out_channels)
        self.adaln_single = AdaLayerNormSingle(inner)

    def patch_embed(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, T, H, W] -> tokens [B, T·H/p·W/p, D], frame by frame."""
        batch, channels, frames = latents.shape[:3]
        per_frame = latents.transpose(1, 2).reshape(batch * frames, channels, *latents.shape[3:])
        tokens = self.pos_embed(per_frame.to(self.dtype))
        return tokens.reshape(batch, frames * tokens.shape[1], tokens.shape[2])

    def grid(self, latents: torch.Tensor) -> tuple[int, int, int]:
        """The token grid (frames, rows, columns) of latents [B, C, T, H, W]."""
        p = self.config.patch_size
        return latents.shape[2] // self.config.patch_size_t, latents.shape[3] // p, latents.shape[4] // p

    def embed(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor,
        video_mask: torch.Tensor | None = None,
    ) -> Carry:
        """Everything before the blocks: patches, adaLN-single timestep, caption projection, masks and RoPE.

        ``prompt`` [B, L, C] with ``prompt_mask`` [B, L] (1 keep); ``video_mask`` [B, T, H, W] over the latents
        (1 keep) or None.
        """
        batch = latents.shape[0]
        hidden = self.patch_embed(latents)
        timestep, embedded = self.adaln_single(
            timestep, {"resolution": None, "aspect_ratio": None}, batch_size=batch, hidden_dtype=hidden.dtype
        )
        prompt = self.caption_projection(prompt.to(hidden.dtype))
        prompt_bias = (1 - prompt_mask.reshape(batch, -1).to(hidden.dtype)) * MASKED_BIAS
        if video_mask is None:
            video_bias = hidden.new_zeros(batch, 0)
        else:
            p, pt = self.config.patch_size, self.config.patch_size_t
            keep = F.max_pool3d(video_mask[:, None].to(hidden.dtype), (pt, p, p), (pt, p, p)).flatten(1)
            video_bias = (1 - keep.bool().to(hidden.dtype)) * MASKED_BIAS
        cos, sin = self.rope(*self.grid(latents), latents.device)
        return Carry(hidden, prompt, timestep, embedded, prompt_bias, video_bias, cos, sin)

    def unpatchify_output(
        self, hidden: torch.Tensor, embedded_timestep: torch.Tensor, grid: tuple[int, int, int]
    ) -> torch.Tensor:
        """Everything after the blocks: modulated norm, projection, tokens back to [B, C, T, H, W]."""
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        hidden = self.proj_out(self.norm_out(hidden) * (1 + scale) + shift)
        frames, height, width = grid
        p, pt, c = self.config.patch_size, self.config.patch_size_t, self.out_channels
        out = hidden.reshape(-1, frames, height, width, pt, p, p, c)
        out = torch.einsum("nthwopqc->nctohpwq", out)
        return out.reshape(-1, c, frames * pt, height * p, width * p)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The release's call: latents [B, C, T, H, W], timesteps [B], prompt [B, (1,) L, C] and its mask."""
        if encoder_hidden_states.ndim == 4:
            encoder_hidden_states = encoder_hidden_states[:, 0]
        carry = self.embed(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, attention_mask)
        for block in self.transformer_blocks:
            carry = run_block(block, carry)
        return self.unpatchify_output(carry.hidden, carry.embedded_timestep, self.grid(hidden_states))
