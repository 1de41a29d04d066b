"""Qwen2_5_VLConverter: Qwen2.5-VL between Hugging Face and MindSpeed-MM (vit + llm in one pipeline); export.

MindSpeed-MM's layout (its checkpoint/vlm_model converters): the vision tower is ``image_encoder.encoder``
(q, k and v of a block interleaved head by head in ``linear_qkv``, gate and up stacked in ``linear_fc1``),
the merger is ``image_encoder.projector``, the LLM is ``text_decoder`` (q, k and v interleaved per
key-value group). ``vit_pp_layers`` and ``llm_pp_layers`` give each stage's share of both stacks; with tied
word embeddings and several stages the last stage carries a copy of the embedding as its output layer.
``tp_size`` splits both stacks as MindSpeed-MM's qwen2.5-vl converter does (``mp_rank_TT[_PPP]``): linear_qkv
(whole key-value groups, whole vision heads), the GLU linear_fc1 (gate and up each), the merger's first linear,
the embedding and output layer (the vocabulary) by rows; linear_proj, linear_fc2 and the merger's second linear by
columns; norms, the patch embedding and the biases of the linears split by columns stay whole on every rank.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from mm_convert import (
    DEFAULT_SHARD_SIZE,
    Converter,
    ConvertError,
    ExportOptions,
    PipelineSpec,
    Rule,
    RuleSet,
    Stack,
    concat,
    deinterleave,
    find_training_checkpoint,
    interleave,
    option,
    parse_layout,
    read_megatron,
    read_safetensors,
    rename,
    staged_output,
    subcommand,
    write_megatron,
    write_safetensors,
)
from mm_convert.export import export_lora
from mm_convert.megatron_layout import STALE, Layout
from mm_convert.tp_split import Split, merge_tp, split_tp
from mm_core import hookimpl
from mm_models_vlm.qwen2_5_vl.export import export_hf

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
}
_SPLITS: dict[str, Split] = {
    "text_decoder.embedding.word_embeddings.weight": (0, 1),
    "text_decoder.output_layer.weight": (0, 1),
    "image_encoder.projector.encoder.linear_fc1.weight": (0, 1),
    "image_encoder.projector.encoder.linear_fc1.bias": (0, 1),
    "image_encoder.projector.encoder.linear_fc2.weight": (1, 1),
}
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")


@dataclass
class HfConfig:
    """``--cfg.hf_config.*``."""

    hf_dir: Path = option(help="Hugging Face Qwen2.5-VL folder (config.json, safetensors, tokenizer ...)")


@dataclass
class ParallelConfig:
    """``--cfg.parallel_config.*``."""

    llm_pp_layers: list | int = option(help="LLM layers per PP stage, e.g. [[36]] or [[1,10,12,13]]; must match "
                                            "model.json's pipeline_num_layers")
    vit_pp_layers: list | int = option(help="vision layers per PP stage, e.g. [[32]] or [[32,0,0,0]]")
    tp_size: int = option(1, help="tensor parallel size: the mp_rank_TT shards (the vision tower split alike)")


@dataclass
class HfToMmOptions:
    """Options of ``hf_to_mm``."""

    mm_dir: Path = option(help="MindSpeed-MM checkpoint folder to write")
    hf_config: HfConfig
    parallel_config: ParallelConfig


@dataclass
class MmToHfOptions(HfToMmOptions):
    """Options of ``mm_to_hf``."""

    save_hf_dir: Path = option(help="Hugging Face folder to write")
    shard_size: str = option(DEFAULT_SHARD_SIZE, help="largest safetensors shard")


@dataclass
class ResplitOptions:
    """Options of ``resplit``."""

    source_dir: Path = option(help="MindSpeed-MM checkpoint folder")
    target_dir: Path = option(help="folder to write the re-cut checkpoint into")
    hf_config: HfConfig
    target_parallel_config: ParallelConfig


def tp_split(key: str) -> Split | None:
    """How ``key`` (MindSpeed-MM name) splits over tensor-parallel ranks: (dim, fused parts), or None: whole."""
    layer = _LAYER.match(key)
    return _LAYER_SPLITS.get(layer.group(2)) if layer else _SPLITS.get(key)


def _llm_rules(heads: int, kv_heads: int, head_dim: int) -> list[Rule]:
    sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    qkv = Rule(tuple(f"model.layers.{{i}}.self_attn.{p}_proj" for p in "qkv"), LLM + "self_attention.linear_qkv",
               lambda ts: interleave(ts, kv_heads), lambda t: deinterleave(t, kv_heads, sizes))
    return [
        qkv,
        concat(("model.layers.{i}.mlp.gate_proj", "model.layers.{i}.mlp.up_proj"), LLM + "mlp.linear_fc1"),
        rename("model.layers.{i}.mlp.down_proj", LLM + "mlp.linear_fc2"),
        rename("model.layers.{i}.self_attn.o_proj", LLM + "self_attention.linear_proj"),
        rename("model.layers.{i}.input_layernorm", LLM + "input_layernorm"),
        rename("model.layers.{i}.post_attention_layernorm", LLM + "pre_mlp_layernorm"),
        rename("model.embed_tokens", "text_decoder.embedding.word_embeddings"),
        rename("model.norm", "text_decoder.decoder.final_layernorm"),
        rename("lm_head", "text_decoder.output_layer"),
    ]


def _vit_rules(heads: int, width: int) -> list[Rule]:
    qkv = Rule(("visual.blocks.{i}.attn.qkv",), VIT + "self_attention.linear_qkv",
               lambda ts: interleave(list(ts[0].chunk(3)), heads),
               lambda t: [torch.cat(deinterleave(t, heads, [width] * 3))])
    return [
        qkv,
        concat(("visual.blocks.{i}.mlp.gate_proj", "visual.blocks.{i}.mlp.up_proj"), VIT + "mlp.linear_fc1"),
        rename("visual.blocks.{i}.mlp.down_proj", VIT + "mlp.linear_fc2"),
        rename("visual.blocks.{i}.attn.proj", VIT + "self_attention.linear_proj"),
        rename("visual.blocks.{i}.norm1", VIT + "input_layernorm"),
        rename("visual.blocks.{i}.norm2", VIT + "pre_mlp_layernorm"),
        rename("visual.patch_embed.proj", "image_encoder.encoder.patch_embed.proj"),
        rename("visual.merger.ln_q", "image_encoder.projector.layernorm"),
        rename("visual.merger.mlp.0", "image_encoder.projector.encoder.linear_fc1"),
        rename("visual.merger.mlp.2", "image_encoder.projector.encoder.linear_fc2"),
    ]


class QwenLayout:
    """A Qwen2.5-VL config's name rules, pipeline stacks and expected checkpoint shapes."""

    def __init__(self, hf_dir: Path) -> None:
        if not (Path(hf_dir) / "config.json").is_file():
            raise ConvertError(f"--cfg.hf_config.hf_dir {hf_dir} is not a Hugging Face folder (no config.json)")
        config = AutoConfig.from_pretrained(hf_dir, local_files_only=True)
        if not isinstance(config, Qwen2_5_VLConfig):
            raise ConvertError(f"{hf_dir} holds a {type(config).__name__}, not a Qwen2.5-VL config")
        self.config = config
        text, vision = config.text_config, config.vision_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.rules = RuleSet([*_llm_rules(text.num_attention_heads, text.num_key_value_heads, head_dim),
                              *_vit_rules(vision.num_heads, vision.hidden_size)])
        embedding, output = "text_decoder.embedding.word_embeddings.weight", "text_decoder.output_layer.weight"
        self.pipeline = PipelineSpec(
            (Stack("vit", VIT.removesuffix("{i}."), ("image_encoder.encoder.patch_embed.",),
                   ("image_encoder.projector.",)),
             Stack("llm", LLM.removesuffix("{i}."), ("text_decoder.embedding.",),
                   ("text_decoder.decoder.final_layernorm.", "text_decoder.output_layer."))),
            tied={output: embedding} if config.tie_word_embeddings else {},
        )

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
        layouts = {"vit": parse_layout(parallel.vit_pp_layers, f"--cfg.{option}.vit_pp_layers"),
                   "llm": parse_layout(parallel.llm_pp_layers, f"--cfg.{option}.llm_pp_layers")}
        shapes = {name: [len(chunk) for chunk in layout] for name, layout in layouts.items()}
        if shapes["vit"] != shapes["llm"]:
            raise ConvertError(f"--cfg.{option}.vit_pp_layers {layouts['vit']} and llm_pp_layers {layouts['llm']} "
                               "must list the same number of stages (and virtual chunks)")
        return layouts


def _saved_name(key: str) -> str:
    """transformers' module name -> the name in Qwen2.5-VL's safetensors (``visual.``, ``model.layers.``)."""
    if key.startswith("model.visual."):
        return key.removeprefix("model.")
    if key.startswith("model.language_model."):
        return "model." + key.removeprefix("model.language_model.")
    return key


class Qwen2_5_VLConverter(Converter):
    """Qwen2.5-VL: Hugging Face <-> MindSpeed-MM (TP, PP/VPP over vit and llm); training checkpoint export."""

    name = "Qwen2_5_VLConverter"
    description = "Qwen2.5-VL: Hugging Face and MindSpeed-MM layouts (TP, vit/llm PP stages); mm checkpoint export"

    @subcommand(HfToMmOptions)
    def hf_to_mm(self, opts: HfToMmOptions) -> str:
        """Hugging Face folder -> MindSpeed-MM checkpoint split by tp_size, cut into vit_pp_layers / llm_pp_layers."""
        qwen = QwenLayout(opts.hf_config.hf_dir)
        layouts = qwen.layouts(opts.parallel_config, "parallel_config")
        tp = opts.parallel_config.tp_size
        tensors = read_safetensors(opts.hf_config.hf_dir)
        tensors.check(qwen.hf_shapes(), f"its config.json ({opts.hf_config.hf_dir / 'config.json'})")
        with staged_output(opts.mm_dir, stale=STALE) as out:
            write_megatron(out, split_tp(qwen.rules.to_mm(tensors), tp, tp_split, "--cfg.parallel_config.tp_size"),
                           layouts, qwen.pipeline)
        return (f"hf_to_mm {opts.hf_config.hf_dir} -> {opts.mm_dir} (tp {tp}, vit {layouts['vit']}, "
                f"llm {layouts['llm']})")

    @subcommand(MmToHfOptions)
    def mm_to_hf(self, opts: MmToHfOptions) -> str:
        """MindSpeed-MM checkpoint (tp_size ranks merged) -> Hugging Face folder (weights renamed back, other files
        from hf_dir)."""
        qwen = QwenLayout(opts.hf_config.hf_dir)
        layouts = qwen.layouts(opts.parallel_config, "parallel_config")
        checkpoint = read_megatron(opts.mm_dir, qwen.pipeline)
        if len(checkpoint.sources) != opts.parallel_config.tp_size:
            raise ConvertError(f"{opts.mm_dir} has {len(checkpoint.sources)} tensor-parallel ranks, not "
                               f"--cfg.parallel_config.tp_size {opts.parallel_config.tp_size}")
        if checkpoint.layouts != layouts:
            raise ConvertError(f"{opts.mm_dir} is cut as vit {checkpoint.layouts['vit']}, llm "
                               f"{checkpoint.layouts['llm']}, not as --cfg.parallel_config says (vit "
                               f"{layouts['vit']}, llm {layouts['llm']})")
        tensors = qwen.rules.to_hf(merge_tp(checkpoint.sources, tp_split))
        tensors.check(qwen.hf_shapes(), f"the Qwen2.5-VL of {opts.hf_config.hf_dir / 'config.json'}")
        with staged_output(opts.save_hf_dir, stale=WEIGHT_FILES) as out:
            write_safetensors(out, tensors, "model", opts.shard_size)
            for path in Path(opts.hf_config.hf_dir).iterdir():
                if path.is_file() and not any(path.match(p) for p in WEIGHT_FILES):
                    shutil.copy2(path, out / path.name)
        return f"mm_to_hf {opts.mm_dir} -> {opts.save_hf_dir}"

    @subcommand(ResplitOptions)
    def resplit(self, opts: ResplitOptions) -> str:
        """MindSpeed-MM checkpoint -> the same weights for another tp_size and other vit / llm pipeline stages."""
        qwen = QwenLayout(opts.hf_config.hf_dir)
        layouts = qwen.layouts(opts.target_parallel_config, "target_parallel_config")
        tp = opts.target_parallel_config.tp_size
        checkpoint = read_megatron(opts.source_dir, qwen.pipeline)
        whole = merge_tp(checkpoint.sources, tp_split)
        with staged_output(opts.target_dir, stale=STALE) as out:
            write_megatron(out, split_tp(whole, tp, tp_split, "--cfg.target_parallel_config.tp_size"), layouts,
                           qwen.pipeline)
        old = checkpoint.layouts
        return (f"resplit {opts.source_dir} (tp {len(checkpoint.sources)}, vit {old['vit']}, llm {old['llm']}) -> "
                f"{opts.target_dir} (tp {tp}, vit {layouts['vit']}, llm {layouts['llm']})")

    @subcommand(ExportOptions)
    def export(self, opts: ExportOptions) -> str:
        """mm training checkpoint -> Hugging Face folder (weights, config and processor) for from_pretrained."""
        adapter = export_lora(opts)
        if adapter is not None:
            return adapter
        checkpoint = find_training_checkpoint(opts.source_path)
        with staged_output(opts.target_path, stale=WEIGHT_FILES) as out:
            export_hf(checkpoint, out)
        return f"exported {checkpoint} -> {opts.target_path}"


@hookimpl
def register_converters(registry: Any) -> None:
    """Add Qwen2_5_VLConverter to mm-convert."""
    registry.add(Qwen2_5_VLConverter)
