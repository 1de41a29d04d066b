"""Qwen2.5-VL's MindSpeed-MM layout: the tensor-parallel split, the name rules between Hugging Face and MindSpeed-MM
(fused, or enable_canonical_hf_struct's canonical one), the pipeline stacks and the checked Hugging Face write."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from mm_convert import (
    ConvertError,
    PipelineSpec,
    Rule,
    RuleSet,
    Stack,
    concat,
    deinterleave,
    interleave,
    parse_layout,
    rename,
    staged_output,
    write_safetensors,
)
from mm_convert.megatron_layout import Layout
from mm_convert.sources import TensorSource
from mm_convert.tp_split import Split
from mm_models_vlm.qwen2_5_vl.convert_options import ParallelConfig

LLM = "text_decoder.decoder.layers.{i}."
VIT = "image_encoder.encoder.blocks.layers.{i}."
_LAYER = re.compile(r"^(text_decoder\.decoder\.layers|image_encoder\.encoder\.blocks\.layers)\.\d+\.(.+)$")
# MindSpeed-MM's tensor-parallel split (qwen2_5_vl_tp_patterns): layer tensors by their name inside the layer.
_LAYER_SPLITS: dict[str, Split] = {
    "self_attention.linear_qkv.weight": (0, 1),
    "self_attention.linear_qkv.bias": (0, 1),
    "self_attention.linear_proj.weight": (1, 1),
    "mlp.linear_fc1.weight": (0, 2),
    "mlp.linear_fc1.bias": (0, 2),
    "mlp.linear_fc2.weight": (1, 1),
    **{f"{name}.{part}": (0, 1) for name in ("self_attention.q_proj", "self_attention.k_proj", "self_attention.v_proj",
                                             "mlp.gate_proj", "mlp.up_proj") for part in ("weight", "bias")},
}
_SPLITS: dict[str, Split] = {
    "text_decoder.embedding.word_embeddings.weight": (0, 1),
    "text_decoder.output_layer.weight": (0, 1),
    "image_encoder.projector.encoder.linear_fc1.weight": (0, 1),
    "image_encoder.projector.encoder.linear_fc1.bias": (0, 1),
    "image_encoder.projector.encoder.linear_fc2.weight": (1, 1),
}
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")
EMBEDDING, OUTPUT = "text_decoder.embedding.word_embeddings.weight", "text_decoder.output_layer.weight"
MCORE_PREFIXES = ("text_decoder.", "image_encoder.")


def tp_split(key: str) -> Split | None:
    """How ``key`` (MindSpeed-MM name) splits over tensor-parallel ranks: (dim, fused parts), or None: whole."""
    layer = _LAYER.match(key)
    return _LAYER_SPLITS.get(layer.group(2)) if layer else _SPLITS.get(key)


def _shared_rules() -> list[Rule]:
    """The names both layouts give alike."""
    return [
        rename("model.layers.{i}.mlp.down_proj", LLM + "mlp.linear_fc2"),
        rename("model.layers.{i}.self_attn.o_proj", LLM + "self_attention.linear_proj"),
        rename("model.layers.{i}.input_layernorm", LLM + "input_layernorm"),
        rename("model.layers.{i}.post_attention_layernorm", LLM + "pre_mlp_layernorm"),
        rename("model.embed_tokens", "text_decoder.embedding.word_embeddings"),
        rename("model.norm", "text_decoder.decoder.final_layernorm"),
        rename("lm_head", "text_decoder.output_layer"),
        rename("visual.blocks.{i}.mlp.down_proj", VIT + "mlp.linear_fc2"),
        rename("visual.blocks.{i}.attn.proj", VIT + "self_attention.linear_proj"),
        rename("visual.blocks.{i}.norm1", VIT + "input_layernorm"),
        rename("visual.blocks.{i}.norm2", VIT + "pre_mlp_layernorm"),
        rename("visual.patch_embed.proj", "image_encoder.encoder.patch_embed.proj"),
        rename("visual.merger.ln_q", "image_encoder.projector.layernorm"),
        rename("visual.merger.mlp.0", "image_encoder.projector.encoder.linear_fc1"),
        rename("visual.merger.mlp.2", "image_encoder.projector.encoder.linear_fc2"),
    ]


def _fused_rules(heads: int, kv_heads: int, head_dim: int, vit_heads: int, vit_width: int) -> list[Rule]:
    """Megatron's fusions: q/k/v interleaved per key-value group (LLM) or per head (vision), gate and up stacked."""
    sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    return [
        Rule(tuple(f"model.layers.{{i}}.self_attn.{p}_proj" for p in "qkv"), LLM + "self_attention.linear_qkv",
             lambda ts: interleave(ts, kv_heads), lambda t: deinterleave(t, kv_heads, sizes)),
        concat(("model.layers.{i}.mlp.gate_proj", "model.layers.{i}.mlp.up_proj"), LLM + "mlp.linear_fc1"),
        Rule(("visual.blocks.{i}.attn.qkv",), VIT + "self_attention.linear_qkv",
             lambda ts: interleave(list(ts[0].chunk(3)), vit_heads),
             lambda t: [torch.cat(deinterleave(t, vit_heads, [vit_width] * 3))]),
        concat(("visual.blocks.{i}.mlp.gate_proj", "visual.blocks.{i}.mlp.up_proj"), VIT + "mlp.linear_fc1"),
    ]


# enable_canonical_hf_struct: every tensor renamed, none fused (needs no config; its LoRA layout too).
CANONICAL_RULES = RuleSet([
    *(rename(f"model.layers.{{i}}.self_attn.{p}_proj", LLM + f"self_attention.{p}_proj") for p in "qkv"),
    *(rename(f"model.layers.{{i}}.mlp.{p}_proj", LLM + f"mlp.{p}_proj") for p in ("gate", "up")),
    rename("visual.blocks.{i}.attn.qkv", VIT + "self_attention.linear_qkv"),
    *(rename(f"visual.blocks.{{i}}.mlp.{p}_proj", VIT + f"mlp.{p}_proj") for p in ("gate", "up")),
    *_shared_rules(),
])


def qwen_pipeline(tied: bool) -> PipelineSpec:
    """MindSpeed-MM's pipeline of Qwen2.5-VL: vit then llm; with ``tied`` embeddings the output layer is the
    embedding's copy on the last stage."""
    return PipelineSpec(
        (Stack("vit", VIT.removesuffix("{i}."), ("image_encoder.encoder.patch_embed.",), ("image_encoder.projector.",)),
         Stack("llm", LLM.removesuffix("{i}."), ("text_decoder.embedding.",),
               ("text_decoder.decoder.final_layernorm.", "text_decoder.output_layer."))),
        tied={OUTPUT: EMBEDDING} if tied else {},
    )


def parse_layouts(vit: Any, llm: Any, option: str) -> dict[str, Layout]:
    """The vit and llm layouts of ``--cfg.<option>.*``, checked to cut the same stages."""
    layouts = {"vit": parse_layout(vit, f"--cfg.{option}.vit_pp_layers"),
               "llm": parse_layout(llm, f"--cfg.{option}.llm_pp_layers")}
    shapes = {name: [len(chunk) for chunk in layout] for name, layout in layouts.items()}
    if shapes["vit"] != shapes["llm"]:
        raise ConvertError(f"--cfg.{option}.vit_pp_layers {layouts['vit']} and llm_pp_layers {layouts['llm']} "
                           "must list the same number of stages (and virtual chunks)")
    return layouts


class QwenLayout:
    """A Qwen2.5-VL config's name rules (fused, or ``canonical``: MindSpeed-MM's enable_canonical_hf_struct),
    pipeline stacks and expected checkpoint shapes."""

    def __init__(self, hf_dir: Path, canonical: bool = False, option: str = "--cfg.hf_config.hf_dir") -> None:
        if not (Path(hf_dir) / "config.json").is_file():
            raise ConvertError(f"{option} {hf_dir} is not a Hugging Face folder (no config.json)")
        config = AutoConfig.from_pretrained(hf_dir, local_files_only=True)
        if not isinstance(config, Qwen2_5_VLConfig):
            raise ConvertError(f"{hf_dir} holds a {type(config).__name__}, not a Qwen2.5-VL config")
        self.config = config
        text, vision = config.text_config, config.vision_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.rules = CANONICAL_RULES if canonical else RuleSet([
            *_fused_rules(text.num_attention_heads, text.num_key_value_heads, head_dim, vision.num_heads,
                          vision.hidden_size),
            *_shared_rules()])
        self.pipeline = qwen_pipeline(config.tie_word_embeddings)

    def hf_shapes(self) -> dict[str, torch.Size]:
        """The tensors a Hugging Face folder of this config holds (transformers' saved names)."""
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration._from_config(self.config)
        shapes = {_saved_name(k): v.shape for k, v in model.state_dict().items()}
        if self.config.tie_word_embeddings:
            shapes.pop("lm_head.weight")
        return shapes

    def check_tp(self, tp_size: int, option: str) -> None:
        """A ConvertError unless ``tp_size`` divides the LLM's key-value groups and the vision tower's heads (the
        fused linear_qkv rows are split by whole groups and heads)."""
        text, vision = self.config.text_config, self.config.vision_config
        if tp_size < 1:
            raise ConvertError(f"--cfg.{option}.tp_size must be at least 1, got {tp_size}")
        for heads, what in ((text.num_key_value_heads, "key-value heads"), (vision.num_heads, "vision heads")):
            if heads % tp_size:
                raise ConvertError(f"--cfg.{option}.tp_size {tp_size} does not divide the model's {heads} {what}")

    def layouts(self, parallel: ParallelConfig, option: str) -> dict[str, Layout]:
        """The vit and llm layouts of ``--cfg.<option>.*``, checked to cut the same stages."""
        self.check_tp(parallel.tp_size, option)
        return parse_layouts(parallel.vit_pp_layers, parallel.llm_pp_layers, option)

    def write_hf(self, tensors: TensorSource, hf_dir: Path, target: Path, shard_size: str) -> None:
        """``tensors`` (Hugging Face names) checked against the config and written to ``target`` with ``hf_dir``'s
        other files (config, tokenizer, processor, chat template)."""
        tensors.check(self.hf_shapes(), f"the Qwen2.5-VL of {Path(hf_dir) / 'config.json'}")
        with staged_output(target, stale=WEIGHT_FILES) as out:
            write_safetensors(out, tensors, "model", shard_size)
            for path in Path(hf_dir).iterdir():
                if path.is_file() and not any(path.match(p) for p in WEIGHT_FILES):
                    shutil.copy2(path, out / path.name)


def _saved_name(key: str) -> str:
    """transformers' module name -> the name in Qwen2.5-VL's safetensors (``visual.``, ``model.layers.``)."""
    if key.startswith("model.visual."):
        return key.removeprefix("model.")
    if key.startswith("model.language_model."):
        return "model." + key.removeprefix("model.language_model.")
    return key


def ldt_ends(layout: Layout) -> tuple[int, int]:
    """The LLM's first and last slots in layerwise_disaggregated_training's U shape: the first stage of the first
    chunk holding layers (embedding) and of the last chunk (final norm, output layer)."""
    stages = len(layout[0])
    first = next((c for c, chunk in enumerate(layout) if sum(chunk)), 0)
    return first * stages, (len(layout) - 1) * stages
