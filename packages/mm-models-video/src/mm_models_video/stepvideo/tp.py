"""Tensor parallelism for Step-Video: each block's attention heads and feed-forward split over the tp ranks.

The release fuses each head's q, k, v (``attn1.wqkv``) and k, v (``attn2.wkv``) next to each other, so splitting
those linears column-wise gives every rank whole heads; ``wq`` (cross-attention) splits the same way, the outputs
``wo`` and ``ff.net.2`` row-wise. The cross-attention's k/v read the text every rank holds whole. The q/k RMSNorms
normalize each head on its own: they stay replicated, and since each rank applies them to its heads only, their
gradients are summed over tp (``per_head``). Under sequence parallelism the tokens are split entering the first
block and gathered after the last; the blocks' LayerNorms and adaLN tables, and the adaLN-single modulation
entering every block, meet the shards and sum their gradients over tp. Patch embedding, caption and CLIP
projections, adaLN-single and the output head stay replicated.
"""

from __future__ import annotations

from mm_core import TensorParallelPlan
from mm_models_video.stepvideo.transformer import StepVideoModel

BLOCKS = "predictor.transformer_blocks"
# Per block: the linears of both attentions and of the feed-forward.
BLOCK_LAYOUT = {
    "attn1.wqkv": "colwise",
    "attn1.wo": "rowwise",
    "attn2.wq": "colwise",
    "attn2.wkv": "colwise_replicated",
    "attn2.wo": "rowwise",
    "ff.net.0.proj": "colwise",
    "ff.net.2": "rowwise",
}
PER_HEAD_NORMS = ("attn1.q_norm", "attn1.k_norm", "attn2.q_norm", "attn2.k_norm")
# What meets the sequence shards inside a block under sequence parallelism.
SEQUENCE_PARALLEL = ("norm1", "norm2", "scale_shift_table")
# A block's forward is (hidden, context, keep, modulation, cos, sin); the modulation scales and shifts the tokens.
MODULATION_INPUT = 3


def tensor_parallel_plan(predictor: StepVideoModel) -> TensorParallelPlan:
    """The predictor's TP layout; the tokens ([batch, tokens, dim]) split before block 0 and gathered after the last."""
    block = f"{BLOCKS}.{{*}}"
    return TensorParallelPlan(
        layout={f"{block}.{path}": style for path, style in BLOCK_LAYOUT.items()},
        per_head=[f"{block}.{path}" for path in PER_HEAD_NORMS],
        sequence_parallel=[f"{block}.{path}" for path in SEQUENCE_PARALLEL],
        sequence_inputs={block: [MODULATION_INPUT]},
        split_inputs={f"{BLOCKS}.0": 1},
        gather_outputs={f"{BLOCKS}.{len(predictor.transformer_blocks) - 1}": 1},
        divide={f"{block}.attn1": ["heads"], f"{block}.attn2": ["heads"]},
        heads=predictor.config.num_attention_heads,
    )
