"""The modules LoRA adapts by default in the video families: every transformer block's attention and FFN projections.

MindSpeed-MM's Wan2.1 LoRA finetuning adapts these (self- and cross-attention projections and the FFN); the other
families follow the same rule on their own module names. Each family's ``parallel_plan`` gives its tuple as
``lora_targets``.
"""


def _blocks(stack: str, names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{stack}.*.{name}" for name in names)


WAN_BLOCK = _blocks("blocks", (
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "attn2.add_k_proj", "attn2.add_v_proj",
    "ffn.net.0.proj", "ffn.net.2"))
"""wan2_1 and custom_dit (diffusers' WanTransformerBlock); I2V's image keys and values where they exist."""

STEPVIDEO_BLOCK = _blocks("transformer_blocks", (
    "attn1.wqkv", "attn1.wo", "attn2.wq", "attn2.wkv", "attn2.wo", "ff.net.0.proj", "ff.net.2"))
"""stepvideo: the fused self-attention qkv, the cross-attention q and kv, both outputs, the FFN."""

OPENSORAPLAN_BLOCK = _blocks("transformer_blocks", (
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"))
"""opensoraplan1_3: its blocks' diffusers Attention (self, Skiparse; cross) and FeedForward."""
