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

from pathlib import Path
from typing import Any

import torch

from mm_convert import (
    Converter,
    ConvertError,
    ExportOptions,
    PipelineSpec,
    find_training_checkpoint,
    read_megatron,
    read_safetensors,
    staged_output,
    subcommand,
    write_megatron,
)
from mm_convert.dcp_layout import read_mindspeed_dcp, write_mindspeed_dcp
from mm_convert.export import export_lora
from mm_convert.lora_weights import convert_lora, lora_split_rule
from mm_convert.megatron_layout import STALE, Layout, MegatronCheckpoint
from mm_convert.peft_adapter import lora_to_hf, write_peft_adapter
from mm_convert.sources import TensorSource
from mm_convert.tp_split import merge_tp, split_tp
from mm_core import hookimpl
from mm_models_vlm.qwen2_5_vl.convert_options import (
    CommonModelConfig,
    DcpToHfOptions,
    HfToMmDcpOptions,
    HfToMmOptions,
    LoraHfToMmOptions,
    LoraMmToHfOptions,
    MmToHfOptions,
    ParallelConfig,
    ResplitOptions,
    SourceParallel,
)
from mm_models_vlm.qwen2_5_vl.export import export_hf
from mm_models_vlm.qwen2_5_vl.qwen_layout import (
    CANONICAL_RULES,
    EMBEDDING,
    MCORE_PREFIXES,
    OUTPUT,
    WEIGHT_FILES,
    QwenLayout,
    _saved_name,
    ldt_ends,
    parse_layouts,
    qwen_pipeline,
    tp_split,
)


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
