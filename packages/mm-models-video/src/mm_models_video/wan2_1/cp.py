"""Context parallelism for Wan2.1: self-attention over the cp ranks' token shards.

Where the tokens are split and gathered is the plugin's ``ContextParallelPlan``; the engine does it.
"""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttention, _get_qkv_projections

from mm_parallel import attention


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding of interleaved pairs, as diffusers' WanAttnProcessor applies it."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class ContextParallelSelfAttention:
    """A WanAttention processor for self-attention whose attention is ``mm_parallel.attention``.

    The hidden states and RoPE tables are this rank's shard of the sequence; the attention spans the
    whole sequence over the cp ranks (plain SDPA without context parallelism).
    """

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Projections, q/k norms and RoPE on the local tokens, attention over the sequence, output projection."""
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("ContextParallelSelfAttention is for Wan's unmasked self-attention (attn1) only")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        out = attention(query, key, value, layout="bshd").flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def use_context_parallel_attention(predictor: WanTransformer3DModel) -> None:
    """Every block's self-attention (attn1) through ``mm_parallel.attention``; cross-attention stays diffusers'.

    Everything else in a block is per token (norms, cross-attention to the whole text, FFN, timestep modulation
    of the whole sample), so only self-attention talks to the other cp ranks.
    """
    for block in predictor.blocks:
        block.attn1.set_processor(ContextParallelSelfAttention())

