"""mm-convert: checkpoint conversion between Hugging Face / diffusers, MindSpeed-MM and mm training checkpoints."""

from mm_convert.converter import Converter, Subcommand, subcommand
from mm_convert.errors import ConvertError
from mm_convert.export import ExportOptions, find_training_checkpoint, run_config
from mm_convert.megatron_layout import (
    PipelineSpec,
    Stack,
    parse_layout,
    read_megatron,
    resplit_megatron,
    write_megatron,
)
from mm_convert.options import option
from mm_convert.publish import staged_output
from mm_convert.registry import Registry, collect_converters
from mm_convert.rules import Rule, RuleSet, concat, deinterleave, interleave, rename
from mm_convert.safetensors_io import DEFAULT_SHARD_SIZE, read_safetensors, write_safetensors
from mm_convert.sources import TensorSource

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "ConvertError",
    "Converter",
    "ExportOptions",
    "PipelineSpec",
    "Registry",
    "Rule",
    "RuleSet",
    "Stack",
    "Subcommand",
    "TensorSource",
    "collect_converters",
    "concat",
    "deinterleave",
    "find_training_checkpoint",
    "interleave",
    "option",
    "parse_layout",
    "read_megatron",
    "read_safetensors",
    "rename",
    "resplit_megatron",
    "run_config",
    "staged_output",
    "subcommand",
    "write_megatron",
    "write_safetensors",
]
