"""OpenSoraPlanConverter (--version v1.3): the release's VAE and transformer to MindSpeed-MM's layout and back.

``vae_convert`` unwraps the released ``merged.ckpt`` (EMA weights) into the plain state dict ``ae.from_pretrained``
takes. ``hf_to_mm`` renames the release's transformer to MindSpeed-MM's ``videodit_sparse_blocks`` names, splits it
for tensor parallelism (q/k/v and the FFN's first projection by rows, the output projections by columns) and cuts
it into pipeline stages by ``pp_layers`` (the embedders, the I2V branches included, on the first stage; the head on
the last). ``resplit`` re-cuts such a checkpoint (``tp_size 1``, ``pp_layers []``: one file for inference),
``mm_to_hf`` writes it back in the release's layout and ``export`` writes an mm training run's transformer so.
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
from mm_core.errors import ConfigError
from mm_models_video.opensoraplan1_3.build import read_state_dict
from mm_models_video.opensoraplan1_3.flavors import model_flavor
from mm_models_video.opensoraplan1_3.inpaint import OpenSoraInpaint
from mm_models_video.opensoraplan1_3.schema import predictor_overrides
from mm_models_video.opensoraplan1_3.transformer import OpenSoraT2V
from mm_models_video.pretrained import source
from mm_models_video.transformer_folder import (
    read_checked,
    read_config,
    write_folder,
)

VERSIONS = ("v1.3",)

_ATTENTION = {"to_q": "proj_q", "to_k": "proj_k", "to_v": "proj_v", "to_out.0": "proj_out"}
# Modules outside the blocks, the same in both layouts.
_TOP = ("adaln_single.emb.timestep_embedder.linear_1", "adaln_single.emb.timestep_embedder.linear_2",
        "adaln_single.linear", "caption_projection.linear_1", "caption_projection.linear_2", "pos_embed.proj",
        "pos_embed_masked_hidden_states.0.proj", "pos_embed_masked_hidden_states.1", "pos_embed_mask.0.proj",
        "pos_embed_mask.1", "scale_shift_table", "proj_out")
RELEASE_TO_MM = RuleSet([
    *(rename(name, name) for name in _TOP),
    *(rename(f"transformer_blocks.{{i}}.{ours}.{a}", f"videodit_sparse_blocks.{{i}}.{theirs}.{b}")
      for ours, theirs in (("attn1", "self_atten"), ("attn2", "cross_atten")) for a, b in _ATTENTION.items()),
    *(rename(f"transformer_blocks.{{i}}.{name}", f"videodit_sparse_blocks.{{i}}.{name}")
      for name in ("ff.net.0.proj", "ff.net.2", "scale_shift_table")),
])
MM_PIPELINE = PipelineSpec((Stack(
    "dit", "videodit_sparse_blocks.",
    firsts=("adaln_single.", "caption_projection.", "pos_embed.", "pos_embed_masked_hidden_states.",
            "pos_embed_mask."),
    lasts=("scale_shift_table", "proj_out."),
),))
# MindSpeed-MM's tensor-parallel layout: split dims of the blocks' projections (the rest is replicated).
_COLUMN = tuple(f"{attn}.{proj}." for attn in ("self_atten", "cross_atten") for proj in ("proj_q", "proj_k", "proj_v"))


def tp_split(key: str) -> tuple[int, int] | None:
    """How ``key`` (MindSpeed-MM name) splits under tensor parallelism: (dim, fused parts), or None when replicated."""
    if not key.startswith("videodit_sparse_blocks."):
        return None
    if any(part in key for part in _COLUMN) or ".ff.net.0.proj." in key:
        return 0, 1
    if key.endswith(("self_atten.proj_out.weight", "cross_atten.proj_out.weight", "ff.net.2.weight")):
        return 1, 1
    return None


def _meta_transformer(config: dict) -> OpenSoraT2V:
    """The transformer a release config.json describes (the inpainting one when it names it), on the meta device."""
    inpaint = "Inpaint" in str(config.get("_class_name", "")) or "vae_scale_factor_t" in config
    cls = OpenSoraInpaint if inpaint else OpenSoraT2V
    try:
        with torch.device("meta"):
            return cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    except (TypeError, ValueError) as exc:
        raise ConvertError(f"not an OpenSoraPlan 1.3 transformer config: {exc}") from exc


def _write_release(target: Path, tensors: TensorSource, config: dict, shard_size: str) -> None:
    write_folder(target, tensors, _meta_transformer(config), "an OpenSoraPlan 1.3 transformer with the given config",
                 shard_size)


def _check_version(version: str) -> None:
    if version not in VERSIONS:
        raise ConvertError(f"OpenSoraPlanConverter --version {version!r} is not supported (supported: v1.3)")


@dataclass
class VaeOptions:
    """Options of ``vae_convert``."""

    source_path: Path = option(help="the released WF-VAE checkpoint, e.g. open-sora-plan/vae/merged.ckpt")
    target_path: Path = option(help="the .pt file to write (model.ae.from_pretrained)")
    version: str = option("v1.3", help="OpenSoraPlan version")


@dataclass
class HfToMmOptions:
    """Options of ``hf_to_mm``."""

    source_path: Path = option(help="the release's transformer folder, e.g. open-sora-plan/93x480p/")
    target_path: Path = option(help="MindSpeed-MM checkpoint folder to write")
    target_parallel_config: ParallelTarget = field(default_factory=ParallelTarget)
    version: str = option("v1.3", help="OpenSoraPlan version")


@dataclass
class ResplitOptions:
    """Options of ``resplit``."""

    source_path: Path = option(help="MindSpeed-MM checkpoint folder")
    target_path: Path = option(help="folder to write the re-cut checkpoint into")
    target_parallel_config: ParallelTarget = field(default_factory=ParallelTarget)
    version: str = option("v1.3", help="OpenSoraPlan version")


@dataclass
class MmToHfOptions:
    """Options of ``mm_to_hf``."""

    source_path: Path = option(help="MindSpeed-MM checkpoint folder (any TP/PP layout)")
    ckpt_path: Path = option(help="the release's transformer folder, for its config.json")
    target_path: Path = option(help="transformer folder to write in the release's layout")
    shard_size: str = option(DEFAULT_SHARD_SIZE, help="largest safetensors shard")
    version: str = option("v1.3", help="OpenSoraPlan version")


@dataclass
class OpenSoraExportOptions(ExportOptions):
    """Options of ``export``."""

    shard_size: str = option(DEFAULT_SHARD_SIZE, help="largest safetensors shard")
    version: str = option("v1.3", help="OpenSoraPlan version")


def _layout(pp_layers: list, num_layers: int) -> list[list[int]]:
    return parse_layout(pp_layers if pp_layers else num_layers, "--cfg.target_parallel_config.pp_layers")


class OpenSoraPlanConverter(SoraConverter):
    """OpenSoraPlan 1.3: the released VAE and transformer, MindSpeed-MM's TP/PP/VPP layout (Megatron or FSDP2 DCP),
    LoRA, mm run export."""

    name = "OpenSoraPlanConverter"
    description = "OpenSoraPlan 1.3 WF-VAE and sparse DiT: release, MindSpeed-MM (TP/PP/VPP) layouts; mm export"
    pipeline = MM_PIPELINE
    tp_split = staticmethod(tp_split)
    versions = VERSIONS

    def lora_rules(self, hf_dir: Path | None) -> list[RuleSet]:
        """LoRA files in the release's (diffusers') names."""
        return [RELEASE_TO_MM]

    @subcommand(VaeOptions)
    def vae_convert(self, opts: VaeOptions) -> str:
        """The released WF-VAE checkpoint (its EMA weights) -> a plain state dict for model.ae.from_pretrained."""
        _check_version(opts.version)
        try:
            state = read_state_dict(opts.source_path, "--cfg.source_path")
        except ConfigError as exc:
            raise ConvertError(str(exc)) from None
        target = Path(opts.target_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, target)
        return f"vae_convert {opts.source_path} -> {target} ({len(state)} tensors)"

    @subcommand(HfToMmOptions)
    def hf_to_mm(self, opts: HfToMmOptions) -> str:
        """The release's transformer -> MindSpeed-MM checkpoint, split by tp_size and cut by pp_layers."""
        _check_version(opts.version)
        tensors, config = read_checked(Path(opts.source_path), _meta_transformer)
        parallel = opts.target_parallel_config
        layout = _layout(parallel.pp_layers, config.get("num_layers", 1))
        with staged_output(opts.target_path, stale=STALE) as out:
            write_megatron(out, split_tp(RELEASE_TO_MM.to_mm(tensors), parallel.tp_size, tp_split), {"dit": layout},
                           MM_PIPELINE)
        return f"hf_to_mm {opts.source_path} -> {opts.target_path} (tp {parallel.tp_size}, layers per stage {layout})"

    @subcommand(ResplitOptions)
    def resplit(self, opts: ResplitOptions) -> str:
        """MindSpeed-MM checkpoint -> the same weights for another tp_size and pp_layers (default: one file)."""
        _check_version(opts.version)
        checkpoint = read_megatron(opts.source_path, MM_PIPELINE)
        whole = merge_tp(checkpoint.sources, tp_split)
        parallel = opts.target_parallel_config
        num_layers = sum(sum(chunk) for chunk in checkpoint.layouts["dit"])
        layout = _layout(parallel.pp_layers, num_layers)
        with staged_output(opts.target_path, stale=STALE) as out:
            write_megatron(out, split_tp(whole, parallel.tp_size, tp_split), {"dit": layout}, MM_PIPELINE)
        return (f"resplit {opts.source_path} (tp {len(checkpoint.sources)}, {checkpoint.layouts['dit']}) -> "
                f"{opts.target_path} (tp {parallel.tp_size}, {layout})")

    @subcommand(MmToHfOptions)
    def mm_to_hf(self, opts: MmToHfOptions) -> str:
        """MindSpeed-MM checkpoint (any TP/PP/VPP layout, or FSDP2 DCP) -> the release's transformer folder."""
        _check_version(opts.version)
        tensors = RELEASE_TO_MM.to_hf(read_mm_checkpoint(opts.source_path, MM_PIPELINE, tp_split))
        _write_release(Path(opts.target_path), tensors, read_config(Path(opts.ckpt_path)), opts.shard_size)
        return f"mm_to_hf {opts.source_path} -> {opts.target_path}"

    @subcommand(OpenSoraExportOptions)
    def export(self, opts: OpenSoraExportOptions) -> str:
        """mm training checkpoint -> the release's transformer folder (config.json + safetensors)."""
        _check_version(opts.version)
        checkpoint = find_training_checkpoint(opts.source_path)
        config = run_config(checkpoint)
        tensors = read_dcp(checkpoint, "model.predictor.")
        _write_release(Path(opts.target_path), tensors, _predictor_config(config.model), opts.shard_size)
        return f"exported {checkpoint} -> {opts.target_path} (transformer)"


def _predictor_config(model: Any) -> dict:
    path = source(model, "predictor", "transformer")
    if path is not None and Path(path).is_dir():
        return read_config(Path(path))
    config = {**model_flavor(model).predictor, **predictor_overrides(model.predictor)}
    if model.task == "i2v":
        config["vae_scale_factor_t"] = model.predictor.vae_scale_factor_t or 4
    return config


@hookimpl
def register_converters(registry: Any) -> None:
    """Add OpenSoraPlanConverter to mm-convert."""
    registry.add(OpenSoraPlanConverter)
