"""Tensor parallelism for Qwen2.5-VL's language model: attention heads and MLP split over the tp ranks, the
vocabulary split in the embedding and the head (tied or not), the loss computed on vocabulary-split logits.

The vision tower and merger run replicated on every tp rank (no TP yet): they are small next to the LLM. Under
sequence parallelism the tokens are split entering the first decoder layer and gathered after the final norm;
in between, each layer's two RMSNorms run on the shards and their output is gathered for the attention and the
MLP (transformers' attention reads the sequence length from its input, so q/k/v and gate/up take the whole
sequence: ``colwise_replicated``), and o/down reduce-scatter back onto the shards. The RMSNorms meet the shards,
so their gradients are summed over tp.
"""

from __future__ import annotations

from transformers import Qwen2_5_VLForConditionalGeneration

from mm_core import TensorParallelPlan

LLM = "model.language_model"
# Per decoder layer: q/k/v and gate/up column-wise on the gathered norm outputs, o and down row-wise.
LAYER_LAYOUT = {
    "self_attn.q_proj": "colwise_replicated",
    "self_attn.k_proj": "colwise_replicated",
    "self_attn.v_proj": "colwise_replicated",
    "self_attn.o_proj": "rowwise",
    "mlp.gate_proj": "colwise_replicated",
    "mlp.up_proj": "colwise_replicated",
    "mlp.down_proj": "rowwise",
}
NORMS = ("input_layernorm", "post_attention_layernorm")


def tensor_parallel_plan(model: Qwen2_5_VLForConditionalGeneration) -> TensorParallelPlan:
    """The language model's TP layout; the tokens ([batch, tokens, hidden]) split before layer 0 under SP."""
    layer = f"{LLM}.layers.{{*}}"
    text = model.config.text_config
    layers = len(model.model.language_model.layers)
    return TensorParallelPlan(
        layout={
            **{f"{layer}.{path}": style for path, style in LAYER_LAYOUT.items()},
            f"{LLM}.embed_tokens": "vocab_embedding",
            "lm_head": "vocab_parallel",
        },
        sequence_parallel=[*(f"{layer}.{norm}" for norm in NORMS), f"{LLM}.norm"],
        split_inputs={f"{LLM}.layers.0": 1},
        gather_outputs={f"{LLM}.norm": 1, **{f"{LLM}.layers.{i}.{norm}": 1 for i in range(layers) for norm in NORMS}},
        divide={f"{layer}.self_attn": ["num_heads", "num_key_value_heads"]},
        heads=text.num_attention_heads,
        kv_heads=text.num_key_value_heads,
    )
