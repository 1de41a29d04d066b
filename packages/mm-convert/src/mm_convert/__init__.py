"""mm-convert: checkpoint conversion between Hugging Face / diffusers, MindSpeed-MM and mm training checkpoints."""

from mm_convert.converter import Converter, Subcommand, subcommand
from mm_convert.errors import ConvertError
from mm_convert.options import option
from mm_convert.registry import Registry, collect_converters
from mm_core.lazy import lazy_exports

__version__ = "0.1.0"

# Imported on first use: they need torch or mm_core's checkpoints, and `mm-convert --help` must answer at once.
_LAZY = {
    "DEFAULT_SHARD_SIZE": "mm_convert.safetensors_io",
    "read_safetensors": "mm_convert.safetensors_io",
    "write_safetensors": "mm_convert.safetensors_io",
    "ExportOptions": "mm_convert.export",
    "find_training_checkpoint": "mm_convert.export",
    "run_config": "mm_convert.export",
    "PipelineSpec": "mm_convert.megatron_layout",
    "Stack": "mm_convert.megatron_layout",
    "parse_layout": "mm_convert.megatron_layout",
    "read_megatron": "mm_convert.megatron_layout",
    "resplit_megatron": "mm_convert.megatron_layout",
    "write_megatron": "mm_convert.megatron_layout",
    "staged_output": "mm_convert.publish",
    "Rule": "mm_convert.rules",
    "RuleSet": "mm_convert.rules",
    "concat": "mm_convert.rules",
    "deinterleave": "mm_convert.rules",
    "interleave": "mm_convert.rules",
    "rename": "mm_convert.rules",
    "TensorSource": "mm_convert.sources",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = ["ConvertError", "Converter", "Registry", "Subcommand", "collect_converters", "option", "subcommand", *_LAZY]
