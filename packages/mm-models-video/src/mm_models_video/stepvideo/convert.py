"""StepVideoConverter: the Step-Video release's transformer to MindSpeed-MM's layout and back, and mm run export.

The release fuses self-attention's q, k, v (``attn1.wqkv``) and cross-attention's k, v (``attn2.wkv``) per head:
the rows are head 0's q, k, v, then head 1's. MindSpeed-MM's ``proj_qkv`` / ``proj_kv`` hold all heads' q, then all
k (then all v), and under tensor parallelism each rank holds its heads' share of each part. ``hf_to_mm`` re-lays
them out, renames ``wo`` / ``wq``, splits for TP (``adaln_single.linear``, ``attn2.proj_q`` and the FFN's first
projection by rows, the output projections by columns) and cuts PP stages by ``pp_layers`` (the embedders on the
first stage, the head on the last). ``resplit`` re-cuts such a checkpoint, ``mm_to_hf`` writes it back in the
release's layout and ``export`` writes an mm training run's transformer so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mm_convert import (
    DEFAULT_SHARD_SIZE,
    ConvertError,
    ExportOptions,
    PipelineSpec,
    Rule,
    RuleSet,
    Stack,
    TensorSource,
    find_training_checkpoint,
    option,
    parse_layout,
    read_megatron,
    rename,
    run_config,
    staged_output,
    subcommand,
    write_megatron,
)
from mm_convert.dcp_io import read_dcp
from mm_convert.megatron_layout import STALE
from mm_convert.sora_commands import ParallelTarget, SoraConverter, read_mm_checkpoint
from mm_convert.tp_split import merge_tp, split_tp
from mm_core import hookimpl
from mm_models_video.pretrained import source
from mm_models_video.stepvideo.flavors import get_flavor
from mm_models_video.stepvideo.schema import flavor_name, predictor_arguments
from mm_models_video.stepvideo.transformer import StepVideoModel
from mm_models_video.transformer_folder import (
    read_checked,
    read_config,
    write_folder,
)

STEP_CONFIG_HINT = "a Step-Video transformer/ folder holds one"
# Modules outside the blocks, the same in both layouts.
_TOP = ("pos_embed.proj", "adaln_single.emb.timestep_embedder.linear_1", "adaln_single.emb.timestep_embedder.linear_2",
        "adaln_single.emb.motion_score_embedder.linear_1", "adaln_single.emb.motion_score_embedder.linear_2",
        "adaln_single.linear", "caption_projection.linear_1", "caption_projection.linear_2", "clip_projection",
        "scale_shift_table", "proj_out")
_BLOCK_SAME = ("attn1.q_norm", "attn1.k_norm", "attn2.q_norm", "attn2.k_norm", "ff.net.0.proj", "ff.net.2",
               "norm1", "norm2", "scale_shift_table")
MM_PIPELINE = PipelineSpec((Stack(
    "dit", "transformer_blocks.",
    firsts=("pos_embed.", "adaln_single.", "caption_projection.", "clip_projection."),
    lasts=("scale_shift_table", "proj_out."),
),))
# Fused tensors (MindSpeed-MM names): how many parts (q, k, v or k, v) each holds along dim 0.
_FUSED = {"attn1.proj_qkv.weight": 3, "attn2.proj_kv.weight": 2}
_ROWS = ("adaln_single.linear.weight", "adaln_single.linear.bias", "attn2.proj_q.weight", "ff.net.0.proj.weight")
_COLUMNS = ("attn1.proj_out.weight", "attn2.proj_out.weight", "ff.net.2.weight")


def heads_to_parts(weight: torch.Tensor, heads: int, parts: int) -> torch.Tensor:
    """Rows per head (q, k, v of head 0, then head 1 ...) -> rows per part (every head's q, then every k ...)."""
    return weight.unflatten(0, (heads, parts, -1)).transpose(0, 1).flatten(0, 2)


def parts_to_heads(weight: torch.Tensor, heads: int, parts: int) -> torch.Tensor:
    """The inverse of :func:`heads_to_parts`."""
    return weight.unflatten(0, (parts, heads, -1)).transpose(0, 1).flatten(0, 2)


def _relaid(hf: str, mm: str, heads: int, parts: int) -> Rule:
    return Rule((hf,), mm, lambda ts: heads_to_parts(ts[0], heads, parts),
                lambda t: [parts_to_heads(t, heads, parts)])


def release_rules(heads: int) -> RuleSet:
    """Release names -> MindSpeed-MM names for a transformer of ``heads`` attention heads."""
    block = "transformer_blocks.{i}."
    return RuleSet([
        *(rename(name, name) for name in _TOP),
        *(rename(block + name, block + name) for name in _BLOCK_SAME),
        rename(block + "attn1.wo", block + "attn1.proj_out"),
        rename(block + "attn2.wo", block + "attn2.proj_out"),
        rename(block + "attn2.wq", block + "attn2.proj_q"),
        _relaid(block + "attn1.wqkv", block + "attn1.proj_qkv", heads, 3),
        _relaid(block + "attn2.wkv", block + "attn2.proj_kv", heads, 2),
    ])


def _split_rule(key: str) -> tuple[int, int] | None:
    """(dim, fused parts) ``key`` (a MindSpeed-MM name) is split by under tensor parallelism; None: replicated."""
    if key in _ROWS[:2]:
        return 0, 1
    if not key.startswith("transformer_blocks."):
        return None
    tail = key.split(".", 2)[2]
    if tail in _FUSED:
        return 0, _FUSED[tail]
    if tail in _ROWS:
        return 0, 1
    if tail in _COLUMNS:
        return 1, 1
    return None


def _meta_transformer(config: dict) -> StepVideoModel:
    try:
        with torch.device("meta"):
            return StepVideoModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    except (TypeError, ValueError) as exc:
        raise ConvertError(f"not a Step-Video transformer config: {exc}") from exc


def _write_release(target: Path, tensors: TensorSource, config: dict, shard_size: str) -> None:
    write_folder(target, tensors, _meta_transformer(config), "a Step-Video transformer with the given config",
                 shard_size)


def _layout(pp_layers: list, num_layers: int) -> list[list[int]]:
    return parse_layout(pp_layers if pp_layers else num_layers, "--cfg.target_parallel_config.pp_layers")


@dataclass
class HfToMmOptions:
    """Options of ``hf_to_mm``."""

    source_path: Path = option(help="the release's transformer folder, e.g. stepvideo-t2v/transformer/")
    target_path: Path = option(help="MindSpeed-MM checkpoint folder to write")
    target_parallel_config: ParallelTarget = field(default_factory=ParallelTarget)


@dataclass
class ResplitOptions:
    """Options of ``resplit``."""

    source_path: Path = option(help="MindSpeed-MM checkpoint folder")
    target_path: Path = option(help="folder to write the re-cut checkpoint into")
    target_parallel_config: ParallelTarget = field(default_factory=ParallelTarget)


@dataclass
class MmToHfOptions:
    """Options of ``mm_to_hf``."""

    source_path: Path = option(help="MindSpeed-MM checkpoint folder (any TP/PP layout)")
    ckpt_path: Path = option(help="the release's transformer folder, for its config.json")
    target_path: Path = option(help="transformer folder to write in the release's layout")
    shard_size: str = option(DEFAULT_SHARD_SIZE, help="largest safetensors shard")


@dataclass
class StepVideoExportOptions(ExportOptions):
    """Options of ``export``."""

    shard_size: str = option(DEFAULT_SHARD_SIZE, help="largest safetensors shard")


class StepVideoConverter(SoraConverter):
    """Step-Video T2V / TI2V: the released transformer, MindSpeed-MM's TP/PP layout (Megatron or FSDP2 DCP), LoRA,
    mm run export."""

    name = "StepVideoConverter"
    description = "Step-Video T2V / TI2V transformer: release, MindSpeed-MM (TP/PP) layouts; mm export"
    pipeline = MM_PIPELINE
    tp_split = staticmethod(_split_rule)

    def lora_rules(self, hf_dir: Path | None) -> list[RuleSet]:
        """LoRA files in the release's names; its fused per-head q/k/v need the heads of hf_dir's config.json."""
        heads = read_config(Path(hf_dir), STEP_CONFIG_HINT).get("num_attention_heads", 48) if hf_dir else 48
        return [release_rules(heads)]

    @subcommand(HfToMmOptions)
    def hf_to_mm(self, opts: HfToMmOptions) -> str:
        """The release's transformer -> MindSpeed-MM checkpoint, split by tp_size and cut by pp_layers."""
        folder = Path(opts.source_path)
        tensors, config = read_checked(folder, _meta_transformer, STEP_CONFIG_HINT)
        parallel = opts.target_parallel_config
        layout = _layout(parallel.pp_layers, config.get("num_layers", 48))
        mm = release_rules(config.get("num_attention_heads", 48)).to_mm(tensors)
        with staged_output(opts.target_path, stale=STALE) as out:
            write_megatron(out, split_tp(mm, parallel.tp_size, _split_rule), {"dit": layout}, MM_PIPELINE)
        return f"hf_to_mm {opts.source_path} -> {opts.target_path} (tp {parallel.tp_size}, layers per stage {layout})"

    @subcommand(ResplitOptions)
    def resplit(self, opts: ResplitOptions) -> str:
        """MindSpeed-MM checkpoint -> the same weights for another tp_size and pp_layers (default: one file)."""
        checkpoint = read_megatron(opts.source_path, MM_PIPELINE)
        whole = merge_tp(checkpoint.sources, _split_rule)
        parallel = opts.target_parallel_config
        layout = _layout(parallel.pp_layers, sum(sum(chunk) for chunk in checkpoint.layouts["dit"]))
        with staged_output(opts.target_path, stale=STALE) as out:
            write_megatron(out, split_tp(whole, parallel.tp_size, _split_rule), {"dit": layout}, MM_PIPELINE)
        return (f"resplit {opts.source_path} (tp {len(checkpoint.sources)}, {checkpoint.layouts['dit']}) -> "
                f"{opts.target_path} (tp {parallel.tp_size}, {layout})")

    @subcommand(MmToHfOptions)
    def mm_to_hf(self, opts: MmToHfOptions) -> str:
        """MindSpeed-MM checkpoint (any TP/PP layout, or FSDP2 DCP) -> the release's transformer folder."""
        config = read_config(Path(opts.ckpt_path), STEP_CONFIG_HINT)
        whole = read_mm_checkpoint(opts.source_path, MM_PIPELINE, _split_rule)
        tensors = release_rules(config.get("num_attention_heads", 48)).to_hf(whole)
        _write_release(Path(opts.target_path), tensors, config, opts.shard_size)
        return f"mm_to_hf {opts.source_path} -> {opts.target_path}"

    @subcommand(StepVideoExportOptions)
    def export(self, opts: StepVideoExportOptions) -> str:
        """mm training checkpoint -> the release's transformer folder (config.json + safetensors)."""
        checkpoint = find_training_checkpoint(opts.source_path)
        model = run_config(checkpoint).model
        tensors = read_dcp(checkpoint, "model.predictor.")
        _write_release(Path(opts.target_path), tensors, _predictor_config(model), opts.shard_size)
        return f"exported {checkpoint} -> {opts.target_path} (transformer)"


def _predictor_config(model: Any) -> dict:
    path = source(model, "predictor", "transformer")
    if path is not None and Path(path).is_dir():
        return read_config(Path(path), STEP_CONFIG_HINT)
    return predictor_arguments(model, get_flavor(flavor_name(model)))


@hookimpl
def register_converters(registry: Any) -> None:
    """Add StepVideoConverter to mm-convert."""
    registry.add(StepVideoConverter)
