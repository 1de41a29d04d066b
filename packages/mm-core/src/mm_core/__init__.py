"""mm-core: the plugin contract, config, runtime, trainer, checkpoints and the ``mm`` CLI."""

from mm_core.errors import CheckpointError, ConfigError, DataError, MMError, PluginError
from mm_core.hookspecs import hookimpl
from mm_core.lazy import lazy_exports

__version__ = "0.1.0"

# Imported on first use: most need torch, whose import takes seconds, and `mm --help` must answer at once.
_LAZY = {
    "Config": "mm_core.config",
    "build_config": "mm_core.config",
    "ContextParallelPlan": "mm_core.plan",
    "ParallelPlan": "mm_core.plan",
    "PipelinePlan": "mm_core.plan",
    "TensorParallelPlan": "mm_core.plan",
    "load_plugins": "mm_core.plugins",
    "Runtime": "mm_core.runtime",
    "create_runtime": "mm_core.runtime",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = ["CheckpointError", "ConfigError", "DataError", "MMError", "PluginError", "hookimpl", *_LAZY]
