"""Tensor parallelism for Wan2.1: each block's attention heads and FFN split over the tp ranks.

Self- and cross-attention split their q/k/v projections column-wise (the cross-attention's k/v from the text every
rank holds whole) and their output row-wise; their q/k RMSNorms span all heads, so they run ``sharded_norm``,
summing their statistics over the ranks, their weights split like q and k (DCP reshards them). Under sequence
parallelism the tokens are split entering the first block and gathered after the last: the adaLN table, the
affine cross-attention norm and the timestep projection entering every block meet the shards, so their
gradients are summed over tp. Patch embedding, condition embedder and the output head stay replicated. I2V's
cross-attention splits its added image k/v projections like the text's (the image tokens are whole on every rank)
and their norm like norm_k.
"""

from __future__ import annotations

from diffusers import WanTransformer3DModel

from mm_core import TensorParallelPlan

BLOCKS = "predictor.blocks"
# Per block: the linears of both attentions and of the FFN, and the q/k norms across all heads.
BLOCK_LAYOUT = {
    "attn1.to_q": "colwise",
    "attn1.to_k": "colwise",
    "attn1.to_v": "colwise",
    "attn1.norm_q": "sharded_norm",
    "attn1.norm_k": "sharded_norm",
    "attn1.to_out.0": "rowwise",
    "attn2.to_q": "colwise",
    "attn2.to_k": "colwise_replicated",
    "attn2.to_v": "colwise_replicated",
    "attn2.norm_q": "sharded_norm",
    "attn2.norm_k": "sharded_norm",
    "attn2.to_out.0": "rowwise",
    "ffn.net.0.proj": "colwise",
    "ffn.net.2": "rowwise",
}
# I2V's cross-attention to the image tokens (diffusers' added_kv_proj_dim).
IMAGE_LAYOUT = {
    "attn2.add_k_proj": "colwise_replicated",
    "attn2.add_v_proj": "colwise_replicated",
    "attn2.norm_added_k": "sharded_norm",
}
# A block's forward is (hidden, context, timestep_proj, rotary); the timestep projection modulates the tokens.
TIMESTEP_INPUT = 2


def tensor_parallel_plan(predictor: WanTransformer3DModel) -> TensorParallelPlan:
    """The predictor's TP layout; the tokens ([batch, tokens, dim]) split before block 0 and gathered after the last."""
    block = f"{BLOCKS}.{{*}}"
    layout = {**BLOCK_LAYOUT, **(IMAGE_LAYOUT if predictor.config.added_kv_proj_dim else {})}
    return TensorParallelPlan(
        layout={f"{block}.{path}": style for path, style in layout.items()},
        sequence_parallel=[f"{block}.norm2", f"{block}.scale_shift_table"],
        sequence_inputs={block: [TIMESTEP_INPUT]},
        split_inputs={f"{BLOCKS}.0": 1},
        gather_outputs={f"{BLOCKS}.{len(predictor.blocks) - 1}": 1},
        divide={f"{block}.attn1": ["heads"], f"{block}.attn2": ["heads"]},
        heads=predictor.config.num_attention_heads,
    )
