"""mm-core: the plugin contract, config, runtime, trainer, checkpoints and the ``mm`` CLI."""

from mm_core.config import Config, build_config
from mm_core.errors import CheckpointError, ConfigError, DataError, MMError, PluginError
from mm_core.hookspecs import hookimpl
from mm_core.plan import ContextParallelPlan, ParallelPlan, PipelinePlan
from mm_core.plugins import load_plugins
from mm_core.runtime import Runtime, create_runtime

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Config",
    "ContextParallelPlan",
    "ConfigError",
    "DataError",
    "MMError",
    "ParallelPlan",
    "PipelinePlan",
    "PluginError",
    "Runtime",
    "build_config",
    "create_runtime",
    "hookimpl",
    "load_plugins",
]
