"""MindSpeed-MM's Qwen2.5-VL model.json: its architecture keys as transformers' config, and the keys mm has no use for.

MindSpeed-MM builds its own Megatron modules from model.json; mm runs transformers' Qwen2.5-VL, so the file's
architecture keys become a ``Qwen2_5_VLConfig`` (or are checked against the checkpoint's config.json) and its
Megatron and Ascend switches are accepted with a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import Qwen2_5_VLConfig

from mm_core.config import Unused
from mm_core.errors import ConfigError

# model.json dotted key -> (part of Qwen2_5_VLConfig: top | text | rope | vision, its key there)
ARCHITECTURE: dict[str, tuple[str, str]] = {
    "img_context_token_id": ("top", "image_token_id"),
    "video_token_id": ("top", "video_token_id"),
    "vision_start_token_id": ("top", "vision_start_token_id"),
    "text_decoder.num_layers": ("text", "num_hidden_layers"),
    "text_decoder.hidden_size": ("text", "hidden_size"),
    "text_decoder.ffn_hidden_size": ("text", "intermediate_size"),
    "text_decoder.num_attention_heads": ("text", "num_attention_heads"),
    "text_decoder.num_query_groups": ("text", "num_key_value_heads"),
    "text_decoder.vocab_size": ("text", "vocab_size"),
    "text_decoder.max_position_embeddings": ("text", "max_position_embeddings"),
    "text_decoder.layernorm_epsilon": ("text", "rms_norm_eps"),
    "text_decoder.attention_dropout": ("text", "attention_dropout"),
    "text_decoder.rope_theta": ("rope", "rope_theta"),
    "text_decoder.mrope_section": ("rope", "mrope_section"),
    "image_encoder.vision_encoder.num_layers": ("vision", "depth"),
    "image_encoder.vision_encoder.hidden_size": ("vision", "hidden_size"),
    "image_encoder.vision_encoder.ffn_hidden_size": ("vision", "intermediate_size"),
    "image_encoder.vision_encoder.intermediate_size": ("vision", "intermediate_size"),
    "image_encoder.vision_encoder.num_attention_heads": ("vision", "num_heads"),
    "image_encoder.vision_encoder.in_channels": ("vision", "in_channels"),
    "image_encoder.vision_encoder.patch_size": ("vision", "patch_size"),
    "image_encoder.vision_encoder.spatial_merge_size": ("vision", "spatial_merge_size"),
    "image_encoder.vision_encoder.temporal_patch_size": ("vision", "temporal_patch_size"),
    "image_encoder.vision_encoder.tokens_per_second": ("vision", "tokens_per_second"),
    "image_encoder.vision_encoder.window_attn_size": ("vision", "window_size"),
    "image_encoder.vision_encoder.fullatt_block_indexes": ("vision", "fullatt_block_indexes"),
    "image_encoder.vision_projector.hidden_size": ("vision", "out_hidden_size"),
}
UNTIE = "text_decoder.untie_embeddings_and_output_weights"

_KERNEL = Unused("Ascend / Megatron kernel switches; torch's fused kernels run")
_DTYPE = Unused("training.bf16 (--bf16) sets the dtype")
_DESIGN = Unused("the layer design of transformers' Qwen2.5-VL, which mm runs")
_IMPLIED = Unused("implied by the architecture keys mm reads")
_LAYER_COMMON: dict[str, Any] = {
    "model_id": _IMPLIED,
    "activation_func": _DESIGN,
    "normalization": _DESIGN,
    "gated_linear_unit": _DESIGN,
    "add_bias_linear": _DESIGN,
    "hidden_dropout": _DESIGN,
    "bias_activation_fusion": _KERNEL,
    "use_fused_rotary_pos_emb": _KERNEL,
    "bf16": _DTYPE,
    "fp16": _DTYPE,
    "params_dtype": _DTYPE,
    "freeze": None,  # mm's: no gradients for this part
}
_VISION_FIXED = {"layernorm_epsilon": _DESIGN, "attention_dropout": _DESIGN}
TEXT_DECODER: dict[str, Any] = {
    **_LAYER_COMMON,
    **{key.split(".", 1)[1]: None for key in ARCHITECTURE if key.startswith("text_decoder.")},
    "untie_embeddings_and_output_weights": None,
    "pipeline_num_layers": None,
    "disable_bias_linear": _DESIGN,
    "add_qkv_bias": _DESIGN,
    "position_embedding_type": _DESIGN,
    "group_query_attention": _IMPLIED,
    "rope_scaling": _IMPLIED,
    "attention_softmax_in_fp32": _KERNEL,
    "parallel_output": _KERNEL,
    "seq_length": Unused("the data's cutoff_len (--seq-length) sets the sequence length"),
    "init_method_std": Unused("weights come from the checkpoint (--load or model.from_pretrained)"),
    "use_remove_padding": Unused("mm packs samples without padding (data basic_parameters.packing)"),
}
VISION_ENCODER: dict[str, Any] = {
    **_LAYER_COMMON,
    **_VISION_FIXED,
    "pipeline_num_layers": None,
    **{key.rsplit(".", 1)[1]: None for key in ARCHITECTURE if key.startswith("image_encoder.vision_encoder.")},
    "llm_hidden_size": _IMPLIED,
    "post_layer_norm": _DESIGN,
    "attention_mask_type": _DESIGN,
    "use_vit_dp": Unused("the vision tower runs on each data-parallel rank's own images"),
}
VISION_PROJECTOR: dict[str, Any] = {
    **_LAYER_COMMON,
    **_VISION_FIXED,
    "hidden_size": None,
    "num_layers": _DESIGN,
    "input_size": _IMPLIED,
    "ffn_hidden_size": _DESIGN,
    "context_parallel_size": Unused("--context-parallel-size sets CP for the whole model"),
}
TOP: dict[str, Any] = {"patch": Unused("MindSpeed-MM's runtime patches of its own modules")}


def given(model: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture values the model section gives (model.json keys not None), by model.json key."""
    out = {}
    for dotted in [*ARCHITECTURE, UNTIE]:
        node: Any = model
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            out[dotted] = node
    return out


def architecture_value(config: Qwen2_5_VLConfig, part: str, key: str) -> Any:
    """The value of ``key`` in ``part`` (an ARCHITECTURE target) of a transformers config."""
    if part == "top":
        return getattr(config, key)
    if part == "rope":
        rope = config.text_config.rope_parameters or {}
        return rope.get(key)
    return getattr(config.text_config if part == "text" else config.vision_config, key)


def check(config: Qwen2_5_VLConfig, model: Mapping[str, Any], where: str) -> None:
    """Each architecture key the model section gives equals the checkpoint's config (else one ConfigError)."""
    wrong = []
    for dotted, value in given(model).items():
        if dotted == UNTIE:
            actual = not config.tie_word_embeddings
        else:
            part, key = ARCHITECTURE[dotted]
            actual = architecture_value(config, part, key)
        if (list(actual) if isinstance(actual, tuple) else actual) != value:
            wrong.append(f"model.{dotted} is {value!r}, {where} has {actual!r}")
    if wrong:
        raise ConfigError(f"the model section does not describe the checkpoint: {'; '.join(wrong)}")


def build_config(model: Mapping[str, Any], base: Qwen2_5_VLConfig) -> Qwen2_5_VLConfig:
    """``base`` (token ids, processor-bound sizes) with every architecture key the model section gives."""
    parts: dict[str, dict[str, Any]] = {"top": {}, "text": base.text_config.to_dict(),
                                        "vision": base.vision_config.to_dict()}
    rope = dict(parts["text"].get("rope_parameters") or {})
    for dotted, value in given(model).items():
        if dotted == UNTIE:
            parts["top"]["tie_word_embeddings"] = not value
            continue
        part, key = ARCHITECTURE[dotted]
        (rope if part == "rope" else parts[part])[key] = value
    parts["text"]["rope_parameters"] = {**rope, "rope_type": rope.get("rope_type", "default")}
    parts["text"].pop("layer_types", None)  # one per layer: derived again for the file's num_layers
    top = {**{k: getattr(base, k) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                             "vision_end_token_id", "tie_word_embeddings")}, **parts["top"]}
    return Qwen2_5_VLConfig(text_config=parts["text"], vision_config=parts["vision"], **top)
