"""Context parallelism for Wan2.1: the transformer's tokens split over the cp ranks, one batch read per cp group."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttention, _get_qkv_projections
from torch import nn
from torch.distributed import ProcessGroup

from mm_core.config import Config
from mm_core.errors import ConfigError
from mm_parallel import attention, current_context, gather_sequence, split_sequence


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
    whole sequence over the current context-parallel group (plain SDPA without one).
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


def _split_rope(module: nn.Module, args: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> tuple:
    # The tables are computed for the whole sequence, so each shard keeps its tokens' full-sequence positions.
    return tuple(split_sequence(table, dim=1) for table in output)


def _split_tokens(module: nn.Module, args: tuple) -> tuple:
    return (split_sequence(args[0], dim=1), *args[1:])


def _gather_tokens(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return gather_sequence(output, dim=1)


def enable_context_parallel(predictor: WanTransformer3DModel) -> None:
    """Split the tokens after patch embedding and gather them after ``proj_out``; self-attention spans the shards.

    Everything between is per token (norms, cross-attention to the whole text, FFN, timestep modulation of
    the whole sample), so only self-attention talks to the other cp ranks. Needs the current context set
    (``mm_parallel.set_context_parallel``, done by the engine); without one the hooks do nothing.
    """
    predictor.rope.register_forward_hook(_split_rope)
    predictor.blocks[0].register_forward_pre_hook(_split_tokens)
    predictor.proj_out.register_forward_hook(_gather_tokens)
    for block in predictor.blocks:
        block.attn1.set_processor(ContextParallelSelfAttention())


def set_sequence_length(tokens: int) -> None:
    """The token count ``proj_out``'s gather unpads to, on a pipeline stage where the split ran on another rank."""
    cp = current_context()
    if cp is not None:
        cp.length = tokens


def check_heads(cp: Config, heads: int) -> None:
    """A ConfigError unless the heads split evenly over the ranks that exchange them (ulysses, usp)."""
    degree = {"ulysses": cp.size, "usp": cp.ulysses_degree}.get(cp.mode)
    if degree and heads % degree:
        raise ConfigError(
            f"parallel.cp.mode {cp.mode} splits the transformer's {heads} attention heads over {degree} ranks: "
            f"pick a {'cp size' if cp.mode == 'ulysses' else 'ulysses_degree'} dividing {heads}, or mode ring"
        )


def broadcast_batch(batch: dict[str, Any] | None, group: ProcessGroup, device: torch.device) -> dict[str, Any]:
    """Rank 0 of ``group``'s batch on every rank of it: tensors broadcast on ``device``, the rest pickled."""
    first = dist.get_rank(group) == 0
    header: list[Any] = [None]
    if first:
        shapes = {k: (v.shape, v.dtype) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        header = [(shapes, {k: v for k, v in batch.items() if k not in shapes})]
    dist.broadcast_object_list(header, group=group, group_src=0, device=device)
    shapes, out = header[0]
    for key, (shape, dtype) in shapes.items():
        tensor = batch[key].to(device).contiguous() if first else torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(tensor, group=group, group_src=0)
        out[key] = tensor
    return out
