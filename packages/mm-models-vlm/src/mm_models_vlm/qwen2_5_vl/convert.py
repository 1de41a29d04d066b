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
``common_model_config.enable_canonical_hf_struct`` is MindSpeed-MM's layout without the fusions (its LoRA layout):
the LLM's ``self_attention.q_proj`` / ``k_proj`` / ``v_proj`` and both stacks' ``mlp.gate_proj`` / ``up_proj`` apart,
the vision ``linear_qkv`` as Hugging Face's ``qkv``; each of them splits by rows under TP.
``dcp_to_hf`` reads MindSpeed-MM's FSDP2 checkpoints (DCP), in either layout or in Hugging Face names;
``hf_to_mm_dcp`` writes one as MindSpeed-MM's does (``release/`` with ``model.<name>``, no tied copy).
``lora_mm_to_hf`` writes a LoRA checkpoint back as a peft adapter folder. ``hf_to_mm_ldt`` is ``hf_to_mm`` in the
U-shaped layout of MindSpeed-MM's layerwise_disaggregated_training: the LLM's embedding on the first stage of the
first chunk holding LLM layers, its final norm and output layer on the first stage of the last chunk.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
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
from mm_convert.dcp_layout import read_mindspeed_dcp, write_mindspeed_dcp
from mm_convert.export import export_lora
from mm_convert.lora_weights import convert_lora, lora_split_rule
from mm_convert.megatron_layout import STALE, Layout, MegatronCheckpoint
from mm_convert.peft_adapter import lora_to_hf, write_peft_adapter
from mm_convert.sources import TensorSource
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
class CommonModelConfig:
    """``--cfg.common_model_config.*``."""

    enable_canonical_hf_struct: bool = option(False, help="MindSpeed-MM's layout without the fused q/k/v and "
                                                          "gate/up (q_proj, k_proj, v_proj, gate_proj, up_proj apart)")


@dataclass
class LoraModelConfig(CommonModelConfig):
    """``--cfg.common_model_config.*`` of ``lora_hf_to_mm``."""

    model_prefix: str | None = option(None, help="prefix of the LoRA file's names, taken off (peft: base_model.model.)")
    new_transformers_weight_key: bool = option(False, help="names of transformers >= 4.52 (model.language_model., "
                                                           "model.visual.); either naming is read")


@dataclass
class LoraOutModelConfig(CommonModelConfig):
    """``--cfg.common_model_config.*`` of ``lora_mm_to_hf``."""

    model_prefix: str | None = option(None, help="prefix put before the adapter's names (peft: base_model.model.)")
    new_transformers_weight_key: bool = option(False, help="write the names of transformers >= 4.52 "
                                                           "(model.language_model., model.visual.)")


@dataclass
class SourceParallel:
    """``--cfg.source_parallel_config.*``: the layout the checkpoint has, checked when given."""

    llm_pp_layers: list | int | None = option(None, help="LLM layers per PP stage of the checkpoint")
    vit_pp_layers: list | int | None = option(None, help="vision layers per PP stage of the checkpoint")
    tp_size: int | None = option(None, help="tensor-parallel size of the checkpoint")


@dataclass
class OptionalHfConfig:
    """``--cfg.hf_config.*`` where it may be left out."""

    hf_dir: Path | None = option(None, help="Hugging Face Qwen2.5-VL folder: its config.json checks tp_size against "
                                            "the heads and says whether the embeddings are tied")


@dataclass
class HfToMmOptions:
    """Options of ``hf_to_mm``."""

    mm_dir: Path = option(help="MindSpeed-MM checkpoint folder to write")
    hf_config: HfConfig
    parallel_config: ParallelConfig
    common_model_config: CommonModelConfig = field(default_factory=CommonModelConfig)


@dataclass(kw_only=True)
class MmToHfOptions(HfToMmOptions):
    """Options of ``mm_to_hf``."""

    save_hf_dir: Path = option(help="Hugging Face folder to write")
    shard_size: str = option(DEFAULT_SHARD_SIZE, help="largest safetensors shard")


@dataclass
class ResplitOptions:
    """Options of ``resplit``."""

    source_dir: Path = option(help="MindSpeed-MM checkpoint folder")
    target_dir: Path = option(help="folder to write the re-cut checkpoint into")
    target_parallel_config: ParallelConfig
    source_parallel_config: SourceParallel = field(default_factory=SourceParallel)
    hf_config: OptionalHfConfig = field(default_factory=OptionalHfConfig)
    common_model_config: CommonModelConfig = field(default_factory=CommonModelConfig)


@dataclass
class LoraHfToMmOptions:
    """Options of ``lora_hf_to_mm``."""

    mm_dir: Path = option(help="MindSpeed-MM LoRA checkpoint folder to write")
    hf_config: HfConfig
    parallel_config: ParallelConfig
    common_model_config: LoraModelConfig = field(default_factory=LoraModelConfig)


@dataclass
class LoraMmToHfOptions:
    """Options of ``lora_mm_to_hf``."""

    mm_dir: Path = option(help="MindSpeed-MM LoRA checkpoint (release/ or iter_*/ with mp_rank_*), as "
                               "lora_hf_to_mm writes it or its LoRA training saves it")
    save_hf_dir: Path = option(help="peft adapter folder to write (adapter_model.safetensors, adapter_config.json)")
    parallel_config: ParallelConfig
    hf_config: OptionalHfConfig = field(default_factory=OptionalHfConfig)
    common_model_config: LoraOutModelConfig = field(default_factory=LoraOutModelConfig)
    lora_alpha: int | None = option(None, help="adapter_config.json's lora_alpha (the training's --lora-alpha); "
                                               "left out: the rank (scaling 1)")
    trust_remote_code: bool = option(False, help="accepted: Qwen2.5-VL's config is transformers' own")


@dataclass
class HfToMmDcpOptions:
    """Options of ``hf_to_mm_dcp``."""

    mm_dir: Path = option(help="folder to write the FSDP2 checkpoint into (release/ and "
                               "latest_checkpointed_iteration.txt), the --load of MindSpeed-MM's FSDP2 training")
    hf_config: HfConfig
    trust_remote_code: bool = option(False, help="accepted: Qwen2.5-VL's config is transformers' own")
    common_model_config: CommonModelConfig = field(default_factory=CommonModelConfig)


@dataclass
class DcpToHfOptions:
    """Options of ``dcp_to_hf`` (MindSpeed-MM's GenericDCPConverter dcp_to_hf)."""

    load_dir: Path = option(help="the FSDP2 checkpoint: a DCP folder (.metadata, __*_*.distcp), e.g. save_dir/release "
                                 "or save_dir/iter_0001000, or the save folder (its latest_checkpointed_iteration.txt)")
    save_dir: Path = option(help="Hugging Face folder to write")
    model_assets_dir: Path = option(help="the Hugging Face Qwen2.5-VL folder trained from: config.json, tokenizer, "
                                         "processor (copied)")
    dcp_prefix: str = option("", help="prefix of the checkpoint's names (after model.), taken off")
    hf_prefix: str = option("", help="prefix put before the names, where the checkpoint holds Hugging Face names")
    fused_linear_names: list | None = option(None, help="MoE expert weights to reshape; Qwen2.5-VL has none")
    trust_remote_code: bool = option(True, help="accepted: Qwen2.5-VL's config is transformers' own, no remote code")
    shard_size: str = option(DEFAULT_SHARD_SIZE, help="largest safetensors shard")
    common_model_config: CommonModelConfig = field(default_factory=CommonModelConfig)


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


def _read_hf(qwen: QwenLayout, hf_dir: Path) -> TensorSource:
    """The Hugging Face folder's weights, checked against its config."""
    tensors = read_safetensors(hf_dir)
    tensors.check(qwen.hf_shapes(), f"its config.json ({hf_dir / 'config.json'})")
    return tensors


def _write_mm(opts: HfToMmOptions, command: str, ldt: bool) -> str:
    """``hf_to_mm`` / ``hf_to_mm_ldt``: the Hugging Face folder split by tp_size and cut into the stages."""
    qwen = QwenLayout(opts.hf_config.hf_dir, opts.common_model_config.enable_canonical_hf_struct)
    layouts = qwen.layouts(opts.parallel_config, "parallel_config")
    tp = opts.parallel_config.tp_size
    tensors = qwen.rules.to_mm(_read_hf(qwen, opts.hf_config.hf_dir))
    ends = {"llm": ldt_ends(layouts["llm"])} if ldt else None
    with staged_output(opts.mm_dir, stale=STALE) as out:
        write_megatron(out, split_tp(tensors, tp, tp_split, "--cfg.parallel_config.tp_size"), layouts,
                       qwen.pipeline, ends=ends)
    return f"{command} {opts.hf_config.hf_dir} -> {opts.mm_dir} (tp {tp}, vit {layouts['vit']}, llm {layouts['llm']})"


def _check_cut(checkpoint: MegatronCheckpoint, parallel: ParallelConfig, layouts: dict[str, Layout]) -> None:
    """``--cfg.parallel_config.*`` must be how ``checkpoint`` is cut."""
    if len(checkpoint.sources) != parallel.tp_size:
        raise ConvertError(f"{checkpoint.path} has {len(checkpoint.sources)} tensor-parallel ranks, not "
                           f"--cfg.parallel_config.tp_size {parallel.tp_size}")
    if checkpoint.layouts != layouts:
        raise ConvertError(f"{checkpoint.path} is cut as vit {checkpoint.layouts['vit']}, llm "
                           f"{checkpoint.layouts['llm']}, not as --cfg.parallel_config says (vit "
                           f"{layouts['vit']}, llm {layouts['llm']})")


def _require_canonical(common: CommonModelConfig, command: str) -> None:
    """MindSpeed-MM's LoRA layout is the canonical one: the flag must say so."""
    if not common.enable_canonical_hf_struct:
        raise ConvertError(f"{command} converts MindSpeed-MM's LoRA layout, which is the canonical one: give "
                           "--cfg.common_model_config.enable_canonical_hf_struct true")


def _transformers_name(saved: str) -> str:
    """The inverse of ``_saved_name``: a saved name under transformers >= 4.52's module names."""
    if saved.startswith("visual."):
        return "model." + saved
    if saved.startswith("model."):
        return "model.language_model." + saved.removeprefix("model.")
    return saved


def _check_source(checkpoint: MegatronCheckpoint, source: SourceParallel) -> None:
    """``--cfg.source_parallel_config.*``, where given, must be how ``checkpoint`` is cut."""
    if source.tp_size is not None and source.tp_size != len(checkpoint.sources):
        raise ConvertError(f"{checkpoint.path} has {len(checkpoint.sources)} tensor-parallel ranks, not "
                           f"--cfg.source_parallel_config.tp_size {source.tp_size}")
    if source.vit_pp_layers is None and source.llm_pp_layers is None:
        return
    stated = parse_layouts(source.vit_pp_layers if source.vit_pp_layers is not None else checkpoint.layouts["vit"],
                           source.llm_pp_layers if source.llm_pp_layers is not None else checkpoint.layouts["llm"],
                           "source_parallel_config")
    if stated != checkpoint.layouts:
        raise ConvertError(f"{checkpoint.path} is cut as vit {checkpoint.layouts['vit']}, llm "
                           f"{checkpoint.layouts['llm']}, not as --cfg.source_parallel_config says (vit "
                           f"{stated['vit']}, llm {stated['llm']})")


def is_canonical(tensors: TensorSource) -> bool:
    """Whether ``tensors`` (MindSpeed-MM names) are in the enable_canonical_hf_struct layout (q/k/v apart)."""
    return any(".self_attention.q_proj." in key for key in tensors)


def _check_canonical(tensors: TensorSource, canonical: bool, where: str) -> None:
    """``enable_canonical_hf_struct`` must say how ``tensors`` (MindSpeed-MM names) are laid out."""
    apart = is_canonical(tensors)
    if canonical != apart:
        have = "q_proj / k_proj / v_proj apart" if apart else "the fused linear_qkv"
        raise ConvertError(f"{where} holds {have}: --cfg.common_model_config.enable_canonical_hf_struct must be "
                           f"{str(apart).lower()}")


def _untied(tensors: TensorSource) -> TensorSource:
    """``tensors`` without the output layer where it is a copy of the embedding (tied; read without a config)."""
    if OUTPUT not in tensors or not torch.equal(tensors[OUTPUT], tensors[EMBEDDING]):
        return tensors
    return TensorSource({k: tensors.meta(k) for k in tensors if k != OUTPUT}, tensors.__getitem__, tensors.where)


class Qwen2_5_VLConverter(Converter):
    """Qwen2.5-VL: Hugging Face <-> MindSpeed-MM (TP, PP/VPP over vit and llm; FSDP2 DCP read); training checkpoint
    export."""

    name = "Qwen2_5_VLConverter"
    description = "Qwen2.5-VL: Hugging Face and MindSpeed-MM layouts (TP, vit/llm PP stages); mm checkpoint export"

    @subcommand(HfToMmOptions)
    def hf_to_mm(self, opts: HfToMmOptions) -> str:
        """Hugging Face folder -> MindSpeed-MM checkpoint split by tp_size, cut into vit_pp_layers / llm_pp_layers."""
        return _write_mm(opts, "hf_to_mm", ldt=False)

    @subcommand(HfToMmOptions)
    def hf_to_mm_ldt(self, opts: HfToMmOptions) -> str:
        """hf_to_mm for layerwise_disaggregated_training (U shape): the LLM's embedding on the first stage of its
        first chunk with layers, its final norm and output layer on the first stage of the last chunk."""
        return _write_mm(opts, "hf_to_mm_ldt", ldt=True)

    @subcommand(HfToMmDcpOptions)
    def hf_to_mm_dcp(self, opts: HfToMmDcpOptions) -> str:
        """Hugging Face folder -> MindSpeed-MM FSDP2 checkpoint (DCP: release/ with model.<its names>)."""
        qwen = QwenLayout(opts.hf_config.hf_dir, opts.common_model_config.enable_canonical_hf_struct)
        folder = write_mindspeed_dcp(opts.mm_dir, qwen.rules.to_mm(_read_hf(qwen, opts.hf_config.hf_dir)))
        return f"hf_to_mm_dcp {opts.hf_config.hf_dir} -> {folder}"

    @subcommand(MmToHfOptions)
    def mm_to_hf(self, opts: MmToHfOptions) -> str:
        """MindSpeed-MM checkpoint (tp_size ranks merged) -> Hugging Face folder (weights renamed back, other files
        from hf_dir)."""
        qwen = QwenLayout(opts.hf_config.hf_dir, opts.common_model_config.enable_canonical_hf_struct)
        layouts = qwen.layouts(opts.parallel_config, "parallel_config")
        checkpoint = read_megatron(opts.mm_dir, qwen.pipeline)
        _check_cut(checkpoint, opts.parallel_config, layouts)
        whole = merge_tp(checkpoint.sources, tp_split)
        _check_canonical(whole, opts.common_model_config.enable_canonical_hf_struct, str(opts.mm_dir))
        qwen.write_hf(qwen.rules.to_hf(whole), opts.hf_config.hf_dir, opts.save_hf_dir, opts.shard_size)
        return f"mm_to_hf {opts.mm_dir} -> {opts.save_hf_dir}"

    @subcommand(ResplitOptions)
    def resplit(self, opts: ResplitOptions) -> str:
        """MindSpeed-MM checkpoint -> the same weights for another tp_size and other vit / llm pipeline stages."""
        target, option = opts.target_parallel_config, "target_parallel_config"
        if opts.hf_config.hf_dir is not None:
            qwen = QwenLayout(opts.hf_config.hf_dir)
            layouts, pipeline = qwen.layouts(target, option), qwen.pipeline
        else:  # without a config.json: the checkpoint says whether the output layer is the embedding's copy
            if target.tp_size < 1:
                raise ConvertError(f"--cfg.{option}.tp_size must be at least 1, got {target.tp_size}")
            layouts, pipeline = parse_layouts(target.vit_pp_layers, target.llm_pp_layers, option), None
        checkpoint = read_megatron(opts.source_dir, pipeline or qwen_pipeline(tied=False))
        _check_source(checkpoint, opts.source_parallel_config)
        whole = merge_tp(checkpoint.sources, tp_split)
        _check_canonical(whole, opts.common_model_config.enable_canonical_hf_struct, str(opts.source_dir))
        if pipeline is None:
            untied = _untied(whole)
            whole, pipeline = untied, qwen_pipeline(tied=OUTPUT not in untied)
        with staged_output(opts.target_dir, stale=STALE) as out:
            write_megatron(out, split_tp(whole, target.tp_size, tp_split, "--cfg.target_parallel_config.tp_size"),
                           layouts, pipeline)
        old = checkpoint.layouts
        return (f"resplit {opts.source_dir} (tp {len(checkpoint.sources)}, vit {old['vit']}, llm {old['llm']}) -> "
                f"{opts.target_dir} (tp {target.tp_size}, vit {layouts['vit']}, llm {layouts['llm']})")

    @subcommand(LoraHfToMmOptions)
    def lora_hf_to_mm(self, opts: LoraHfToMmOptions) -> str:
        """peft LoRA of the Hugging Face model (adapter_model.safetensors) -> MindSpeed-MM LoRA checkpoint
        (enable_canonical_hf_struct layout), split by tp_size and cut into the pipeline stages."""
        common, parallel = opts.common_model_config, opts.parallel_config
        _require_canonical(common, "lora_hf_to_mm")
        if parallel.tp_size < 1:
            raise ConvertError(f"--cfg.parallel_config.tp_size must be at least 1, got {parallel.tp_size}")
        layouts = parse_layouts(parallel.vit_pp_layers, parallel.llm_pp_layers, "parallel_config")
        lora = read_safetensors(opts.hf_config.hf_dir)
        prefix = common.model_prefix or ""
        names = {_saved_name(k.removeprefix(prefix)): k for k in lora}
        tensors = convert_lora(TensorSource({n: lora.meta(k) for n, k in names.items()}, lambda n: lora[names[n]],
                                            lora.where), [CANONICAL_RULES])
        stacks = tuple(s for s in qwen_pipeline(tied=False).stacks if any(s.layer_of(k) is not None for k in tensors))
        with staged_output(opts.mm_dir, stale=STALE) as out:
            write_megatron(out, split_tp(tensors, parallel.tp_size, lora_split_rule(tp_split),
                                         "--cfg.parallel_config.tp_size"),
                           {s.name: layouts[s.name] for s in stacks}, PipelineSpec(stacks), sparse=True)
        return (f"lora_hf_to_mm {opts.hf_config.hf_dir} -> {opts.mm_dir} ({len(tensors) // 2} LoRA pairs, tp "
                f"{parallel.tp_size}, {', '.join(f'{s.name} {layouts[s.name]}' for s in stacks)})")

    @subcommand(LoraMmToHfOptions)
    def lora_mm_to_hf(self, opts: LoraMmToHfOptions) -> str:
        """MindSpeed-MM LoRA checkpoint (TP ranks merged, stages joined) -> peft adapter folder in Hugging Face
        names (adapter_model.safetensors, adapter_config.json)."""
        common, parallel = opts.common_model_config, opts.parallel_config
        _require_canonical(common, "lora_mm_to_hf")
        layouts = parse_layouts(parallel.vit_pp_layers, parallel.llm_pp_layers, "parallel_config")
        checkpoint = read_megatron(opts.mm_dir, qwen_pipeline(tied=False), layouts)
        _check_cut(checkpoint, parallel, layouts)
        hf = lora_to_hf(merge_tp(checkpoint.sources, lora_split_rule(tp_split)), CANONICAL_RULES)
        prefix = common.model_prefix or ""
        names = {prefix + (_transformers_name(k) if common.new_transformers_weight_key else k): k for k in hf}
        adapter = TensorSource({n: hf.meta(k) for n, k in names.items()}, lambda n: hf[names[n]], hf.where)
        base = str(opts.hf_config.hf_dir) if opts.hf_config.hf_dir is not None else None
        summary = write_peft_adapter(opts.save_hf_dir, adapter, prefix, opts.lora_alpha, base)
        return f"lora_mm_to_hf {opts.mm_dir} -> {opts.save_hf_dir} ({summary})"

    @subcommand(DcpToHfOptions)
    def dcp_to_hf(self, opts: DcpToHfOptions) -> str:
        """MindSpeed-MM FSDP2 checkpoint (DCP; MindSpeed-MM's names in either layout, or Hugging Face names) ->
        Hugging Face folder (other files from model_assets_dir)."""
        if opts.fused_linear_names:
            raise ConvertError(f"--fused_linear_names {opts.fused_linear_names}: Qwen2.5-VL has no MoE experts")
        canonical = opts.common_model_config.enable_canonical_hf_struct
        qwen = QwenLayout(opts.model_assets_dir, canonical, "--model_assets_dir")
        loaded = read_mindspeed_dcp(opts.load_dir, qwen.pipeline.stacks)
        names = {(k[len(opts.dcp_prefix):] if k.startswith(opts.dcp_prefix) else k): k for k in loaded}
        if any(name.startswith(MCORE_PREFIXES) for name in names):
            tensors = TensorSource({n: loaded.meta(k) for n, k in names.items()}, lambda n: loaded[names[n]],
                                   loaded.where)
            _check_canonical(tensors, canonical, loaded.where)
            if qwen.config.tie_word_embeddings:
                tensors = _untied(tensors)
            tensors = qwen.rules.to_hf(tensors)
        else:  # Hugging Face names (GenericDCPConverter's hf_to_dcp), transformers' module names saved as such
            names = {_saved_name(opts.hf_prefix + n): k for n, k in names.items()}
            tensors = TensorSource({n: loaded.meta(k) for n, k in names.items()}, lambda n: loaded[names[n]],
                                   loaded.where)
        qwen.write_hf(tensors, opts.model_assets_dir, opts.save_dir, opts.shard_size)
        return f"dcp_to_hf {loaded.where} -> {opts.save_dir}"

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
