"""Wan21Converter: the Wan2.1 transformer between diffusers, MindSpeed-MM and Wan-AI's original layout; export."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import WanTransformer3DModel

from mm_convert import (
    DEFAULT_SHARD_SIZE,
    ConvertError,
    ExportOptions,
    PipelineSpec,
    RuleSet,
    Stack,
    find_training_checkpoint,
    option,
    parse_layout,
    read_safetensors,
    rename,
    resplit_megatron,
    run_config,
    staged_output,
    subcommand,
    write_megatron,
    write_safetensors,
)
from mm_convert.dcp_io import read_dcp
from mm_convert.export import export_lora
from mm_convert.megatron_layout import STALE
from mm_convert.sora_commands import SoraConverter, read_mm_checkpoint
from mm_core import hookimpl
from mm_models_video.pretrained import source
from mm_models_video.transformer_folder import (
    STALE_WEIGHTS,
    WEIGHTS,
    read_checked,
    read_config,
    write_checked,
    write_folder,
)
from mm_models_video.wan2_1.build import predictor_overrides
from mm_models_video.wan2_1.flavors import get_flavor

# diffusers WanTransformer3DModel module -> Wan-AI original / MindSpeed-MM module, outside the blocks.
_EMBEDDERS = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos",
    "scale_shift_table": "head.modulation",
    "proj_out": "head.head",
}
_TEXT_EMBEDDER = ("condition_embedder.text_embedder.linear_1", "condition_embedder.text_embedder.linear_2")
# Inside each block: the common part, then the attention names of each layout.
_BLOCK = {"scale_shift_table": "modulation", "norm2": "norm3", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2"}
_ORIGINAL_ATTENTION = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o", "norm_q": "norm_q", "norm_k": "norm_k"}
_MM_ATTENTION = {
    "to_q": "proj_q", "to_k": "proj_k", "to_v": "proj_v", "to_out.0": "proj_out", "norm_q": "q_norm", "norm_k": "k_norm"
}
_ORIGINAL_IMAGE_KV = {"add_k_proj": "k_img", "add_v_proj": "v_img", "norm_added_k": "norm_k_img"}
_MM_IMAGE_KV = {"add_k_proj": "k_img", "add_v_proj": "v_img", "norm_added_k": "k_norm_img"}


def _rules(text_embedding: tuple[str, str], attention: dict[str, str], image_kv: dict[str, str]) -> RuleSet:
    block = dict(_BLOCK)
    for ours, theirs in (("attn1", "self_attn"), ("attn2", "cross_attn")):
        block.update({f"{ours}.{k}": f"{theirs}.{v}" for k, v in attention.items()})
    block.update({f"attn2.{k}": f"cross_attn.{v}" for k, v in image_kv.items()})
    top = {**_EMBEDDERS, **dict(zip(_TEXT_EMBEDDER, text_embedding))}
    return RuleSet([*(rename(k, v) for k, v in top.items()),
                    *(rename(f"blocks.{{i}}.{k}", f"blocks.{{i}}.{v}") for k, v in block.items())])


DIFFUSERS_TO_ORIGINAL = _rules(("text_embedding.0", "text_embedding.2"), _ORIGINAL_ATTENTION, _ORIGINAL_IMAGE_KV)
DIFFUSERS_TO_MM = _rules(("text_embedding.linear_1", "text_embedding.linear_2"), _MM_ATTENTION, _MM_IMAGE_KV)
# Wan-AI's (and DiffSynth's LoRA files') names -> MindSpeed-MM's: both rule sets list the diffusers names alike.
ORIGINAL_TO_MM = RuleSet([rename(o.mm, m.mm) for o, m in zip(DIFFUSERS_TO_ORIGINAL.rules, DIFFUSERS_TO_MM.rules)])
# MindSpeed-MM's pipeline: the embedders before the first block, the head after the last.
MM_PIPELINE = PipelineSpec((Stack("dit", "blocks.", firsts=(
    "patch_embedding.", "text_embedding.", "time_embedding.", "time_projection.", "img_emb."), lasts=("head.",)),))

# Wan-AI's model types and the diffusers settings that tell them apart.
_IMAGE_DIM = 1280
_FLF2V_POS_LEN = 257 * 2


def original_to_diffusers_config(config: dict) -> dict:
    """A Wan-AI ``config.json`` (WanModel: dim, num_heads, in_dim ...) as WanTransformer3DModel arguments."""
    kind = config.get("model_type", "t2v")
    if kind not in ("t2v", "i2v", "flf2v"):
        raise ConvertError(f"Wan model_type {kind!r} is not supported (t2v, i2v, flf2v)")
    dim, heads = config["dim"], config["num_heads"]
    return {
        "patch_size": list(config.get("patch_size", (1, 2, 2))),
        "num_attention_heads": heads,
        "attention_head_dim": dim // heads,
        "in_channels": config["in_dim"],
        "out_channels": config["out_dim"],
        "text_dim": config.get("text_dim", 4096),
        "freq_dim": config["freq_dim"],
        "ffn_dim": config["ffn_dim"],
        "num_layers": config["num_layers"],
        "cross_attn_norm": config.get("cross_attn_norm", True),
        "qk_norm": "rms_norm_across_heads" if config.get("qk_norm", True) else None,
        "eps": config.get("eps", 1e-6),
        "image_dim": _IMAGE_DIM if kind != "t2v" else None,
        "added_kv_proj_dim": dim if kind != "t2v" else None,
        "pos_embed_seq_len": _FLF2V_POS_LEN if kind == "flf2v" else None,
    }


def diffusers_to_original_config(config: dict) -> dict:
    """WanTransformer3DModel's config as a Wan-AI ``config.json``."""
    kind = "t2v" if not config.get("image_dim") else "flf2v" if config.get("pos_embed_seq_len") else "i2v"
    return {
        "_class_name": "WanModel",
        "model_type": kind,
        "patch_size": list(config["patch_size"]),
        "text_len": 512,
        "in_dim": config["in_channels"],
        "dim": config["num_attention_heads"] * config["attention_head_dim"],
        "ffn_dim": config["ffn_dim"],
        "freq_dim": config["freq_dim"],
        "text_dim": config["text_dim"],
        "out_dim": config["out_channels"],
        "num_heads": config["num_attention_heads"],
        "num_layers": config["num_layers"],
        "window_size": [-1, -1],
        "qk_norm": config.get("qk_norm") is not None,
        "cross_attn_norm": config["cross_attn_norm"],
        "eps": config["eps"],
    }


def _meta_transformer(config: dict) -> WanTransformer3DModel:
    """The transformer a diffusers config describes, on the meta device (no memory, any size)."""
    arguments = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        with torch.device("meta"):
            return WanTransformer3DModel.from_config(arguments)
    except (TypeError, ValueError) as exc:
        raise ConvertError(f"not a WanTransformer3DModel config: {exc}") from exc


WAN_MODEL = "a WanTransformer3DModel with the given config"


@dataclass
class HfToMmOptions:
    """Options of ``hf_to_mm`` (convert_ckpt.py --mode convert_to_mm)."""

    source_path: Path = option(help="diffusers transformer folder, e.g. Wan2.1-T2V-1.3B-Diffusers/transformer")
    target_path: Path = option(help="MindSpeed-MM checkpoint folder to write (may be the source folder)")
    pp_vpp_layers: list | int | None = option(
        None, help="layers per PP stage, e.g. [15,15], or [[...], ...] per VPP chunk; none: one stage"
    )


@dataclass
class MmToHfOptions:
    """Options of ``mm_to_hf`` (convert_ckpt.py --mode convert_to_hf)."""

    source_path: Path = option(help="MindSpeed-MM checkpoint folder (latest_checkpointed_iteration.txt, release/ ...)")
    ckpt_path: Path = option(help="the original diffusers transformer folder, for its config.json")
    target_path: Path = option(help="diffusers transformer folder to write")
    shard_size: str = option(DEFAULT_SHARD_SIZE, help="largest safetensors shard")


@dataclass
class ResplitOptions:
    """Options of ``resplit``."""

    source_path: Path = option(help="MindSpeed-MM checkpoint folder")
    target_path: Path = option(help="folder to write the re-cut checkpoint into (may be the source folder)")
    pp_vpp_layers: list | int = option(help="layers per PP stage, e.g. [[4]], [[2,2]] or [[1,1],[1,1]] (VPP)")


@dataclass
class LayoutOptions:
    """Options of ``original_to_hf`` and ``hf_to_original``."""

    source_path: Path = option(help="folder with config.json and safetensors weights")
    target_path: Path = option(help="folder to write")
    shard_size: str = option(DEFAULT_SHARD_SIZE, help="largest safetensors shard")


@dataclass
class WanExportOptions(ExportOptions):
    """Options of ``export``."""

    base_dir: Path | None = option(None, help="diffusers pipeline folder to copy vae, text_encoder ... from "
                                              "(default: the run's model.from_pretrained when it is a folder)")
    shard_size: str = option(DEFAULT_SHARD_SIZE, help="largest safetensors shard")


# The parts of a diffusers Wan pipeline folder that training leaves unchanged, copied into an export.
BASE_COMPONENTS = ("model_index.json", "vae", "text_encoder", "tokenizer", "scheduler", "image_encoder",
                   "image_processor")


class Wan21Converter(SoraConverter):
    """Wan2.1 transformer: diffusers <-> MindSpeed-MM (PP/VPP, Megatron or FSDP2 DCP) <-> Wan-AI original; LoRA;
    training checkpoint export."""

    name = "Wan21Converter"
    other_names = ("WanConverter",)  # MindSpeed-MM's name
    description = "Wan2.1 T2V/I2V transformer: diffusers, MindSpeed-MM and Wan-AI layouts; mm checkpoint export"
    aliases = {"convert_to_mm": "hf_to_mm", "convert_to_hf": "mm_to_hf"}
    pipeline = MM_PIPELINE

    def lora_rules(self, hf_dir: Path | None) -> list[RuleSet]:
        """LoRA files in diffusers' or Wan-AI's (DiffSynth's) names."""
        return [DIFFUSERS_TO_MM, ORIGINAL_TO_MM]

    @subcommand(HfToMmOptions)
    def hf_to_mm(self, opts: HfToMmOptions) -> str:
        """diffusers transformer -> MindSpeed-MM checkpoint cut into pp_vpp_layers (convert_ckpt.py convert_to_mm)."""
        tensors, config = read_checked(Path(opts.source_path), _meta_transformer)
        layers = config["num_layers"] if opts.pp_vpp_layers is None else opts.pp_vpp_layers
        layout = parse_layout(layers, "--cfg.pp_vpp_layers")
        with staged_output(opts.target_path, stale=STALE) as out:
            write_megatron(out, [DIFFUSERS_TO_MM.to_mm(tensors)], {"dit": layout}, MM_PIPELINE)
        return f"hf_to_mm {opts.source_path} -> {opts.target_path} (layers per stage {layout})"

    @subcommand(MmToHfOptions)
    def mm_to_hf(self, opts: MmToHfOptions) -> str:
        """MindSpeed-MM checkpoint (any PP/VPP layout, or FSDP2 DCP) -> diffusers transformer (convert_to_hf)."""
        tensors = DIFFUSERS_TO_MM.to_hf(read_mm_checkpoint(opts.source_path, MM_PIPELINE, None))
        model = _meta_transformer(read_config(Path(opts.ckpt_path)))
        write_folder(Path(opts.target_path), tensors, model, WAN_MODEL, opts.shard_size)
        return f"mm_to_hf {opts.source_path} -> {opts.target_path}"

    @subcommand(ResplitOptions)
    def resplit(self, opts: ResplitOptions) -> str:
        """MindSpeed-MM checkpoint -> the same weights cut into other pipeline stages."""
        layout = parse_layout(opts.pp_vpp_layers, "--cfg.pp_vpp_layers")
        old = resplit_megatron(opts.source_path, opts.target_path, {"dit": layout}, MM_PIPELINE)
        return f"resplit {opts.source_path} {old['dit']} -> {opts.target_path} {layout}"

    @subcommand(LayoutOptions)
    def original_to_hf(self, opts: LayoutOptions) -> str:
        """Wan-AI original checkpoint (Wan2.1-T2V-1.3B) -> diffusers transformer folder."""
        config = original_to_diffusers_config(read_config(Path(opts.source_path)))
        tensors = DIFFUSERS_TO_ORIGINAL.to_hf(read_safetensors(opts.source_path))
        write_folder(Path(opts.target_path), tensors, _meta_transformer(config), WAN_MODEL, opts.shard_size)
        return f"original_to_hf {opts.source_path} -> {opts.target_path}"

    @subcommand(LayoutOptions)
    def hf_to_original(self, opts: LayoutOptions) -> str:
        """diffusers transformer folder -> Wan-AI original checkpoint layout."""
        tensors, config = read_checked(Path(opts.source_path), _meta_transformer)
        with staged_output(opts.target_path, stale=STALE_WEIGHTS) as out:
            write_safetensors(out, DIFFUSERS_TO_ORIGINAL.to_mm(tensors), WEIGHTS, opts.shard_size)
            (out / "config.json").write_text(json.dumps(diffusers_to_original_config(config), indent=2) + "\n")
        return f"hf_to_original {opts.source_path} -> {opts.target_path}"

    @subcommand(WanExportOptions)
    def export(self, opts: WanExportOptions) -> str:
        """mm training checkpoint -> diffusers folder: transformer/ trained, the rest copied from the base."""
        adapter = export_lora(opts)
        if adapter is not None:
            return adapter
        checkpoint = find_training_checkpoint(opts.source_path)
        config = run_config(checkpoint)
        base = opts.base_dir or _local_pretrained(config.model)
        if base is not None and not Path(base).is_dir():
            raise ConvertError(f"--cfg.base_dir {base} is not a folder")
        tensors = read_dcp(checkpoint, "model.predictor.")
        transformer = _predictor_config(config.model)
        copied = []
        with staged_output(opts.target_path) as out:
            write_checked(out / "transformer", tensors, _meta_transformer(transformer), WAN_MODEL, opts.shard_size)
            for name in BASE_COMPONENTS if base is not None else ():
                found = Path(base) / name
                if found.is_dir():
                    shutil.copytree(found, out / name)
                elif found.is_file():
                    shutil.copy2(found, out / name)
                else:
                    continue
                copied.append(name)
        extra = f"; copied {', '.join(copied)} from {base}" if copied else ""
        return f"exported {checkpoint} -> {opts.target_path} (transformer){extra}"


def _local_pretrained(model: Any) -> Path | None:
    base = model.get("from_pretrained")
    return Path(base) if base and Path(base).is_dir() else None


def _predictor_config(model: Any) -> dict:
    path = source(model, "predictor", "transformer")
    if path is None:
        flavor = get_flavor(model.flavor)
        task = model.get("task", "t2v")
        return {**flavor.predictor_for(task), **predictor_overrides(model.predictor, flavor, task)}
    if not Path(path).is_dir():
        raise ConvertError(f"the run's transformer came from {path}, not a local folder to read its config.json from")
    return read_config(Path(path))


@hookimpl
def register_converters(registry: Any) -> None:
    """Add Wan21Converter to mm-convert."""
    registry.add(Wan21Converter)

