"""The modules LoRA adapts by default in the video families built on diffusers' Wan transformer block."""

WAN_BLOCK = tuple(
    f"blocks.*.{name}"
    for name in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                 "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "attn2.add_k_proj", "attn2.add_v_proj",
                 "ffn.net.0.proj", "ffn.net.2")
)
"""Self- and cross-attention projections (I2V's image keys and values too) and the FFN of every block, as
MindSpeed-MM's Wan2.1 LoRA finetuning adapts them."""
