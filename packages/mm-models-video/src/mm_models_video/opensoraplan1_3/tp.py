"""Tensor parallelism for OpenSoraPlan 1.3: each block's attention heads and FFN split over the tp ranks.

The self-attention (dense or Skiparse) splits q/k/v column-wise and its output row-wise: each rank attends over
its heads, and Skiparse's token subsets span the whole sequence because a column-wise linear takes the whole
sequence (under sequence parallelism it gathers the shards first). The cross-attention's k/v come from the prompt
every rank holds whole. The block norms are plain LayerNorms (affine only with ``norm_elementwise_affine``); under
sequence parallelism they, the adaLN table and the adaLN-single timestep entering every block meet the sequence
shards, so their gradients are summed over tp. Patch embedding, caption projection, adaLN-single, the output norm,
its table and ``proj_out`` stay replicated (after the last block the tokens are whole again).
"""

from __future__ import annotations

from mm_core import TensorParallelPlan
from mm_models_video.opensoraplan1_3.transformer import OpenSoraT2V

BLOCKS = "predictor.transformer_blocks"
# Per block: the linears of both attentions and of the FFN.
BLOCK_LAYOUT = {
    "attn1.to_q": "colwise",
    "attn1.to_k": "colwise",
    "attn1.to_v": "colwise",
    "attn1.to_out.0": "rowwise",
    "attn2.to_q": "colwise",
    "attn2.to_k": "colwise_replicated",
    "attn2.to_v": "colwise_replicated",
    "attn2.to_out.0": "rowwise",
    "ff.net.0.proj": "colwise",
    "ff.net.2": "rowwise",
}
# A block's forward is (hidden, prompt, timestep, prompt_bias, video_bias, rope); the timestep modulates the tokens.
TIMESTEP_INPUT = 2


def tensor_parallel_plan(predictor: OpenSoraT2V) -> TensorParallelPlan:
    """The predictor's TP layout; the tokens ([batch, tokens, dim]) split before block 0 and gathered after the last."""
    block = f"{BLOCKS}.{{*}}"
    return TensorParallelPlan(
        layout={f"{block}.{path}": style for path, style in BLOCK_LAYOUT.items()},
        sequence_parallel=[f"{block}.norm1", f"{block}.norm2", f"{block}.scale_shift_table"],
        sequence_inputs={block: [TIMESTEP_INPUT]},
        split_inputs={f"{BLOCKS}.0": 1},
        gather_outputs={f"{BLOCKS}.{len(predictor.transformer_blocks) - 1}": 1},
        divide={f"{block}.attn1": ["heads"], f"{block}.attn2": ["heads"]},
        heads=predictor.config.num_attention_heads,
    )
