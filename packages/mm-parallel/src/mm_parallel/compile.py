"""``torch.compile`` of the model's repeated blocks (``parallel.compile``), torchtitan's way.

Each block is compiled on its own rather than the whole model: the blocks share one compiled graph,
graph breaks in the embedding or head stay out of it, and FSDP2's hooks on each block run outside the
compiled region. It is applied after activation checkpointing, so the compiler sees the checkpoint and
the selective policy's choice of what to keep, and before FSDP2, which shards the compiled block.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mm_core.errors import ConfigError
from mm_parallel.patterns import expand, outermost, replace_module

log = logging.getLogger("mm")

COMPILE_DEFAULTS: dict[str, Any] = {
    "enable": False,
    "modules": [],  # patterns like blocks.{*}; empty: the plugin's fsdp_modules (its repeated blocks)
    "backend": "inductor",
    "mode": None,  # torch.compile's mode: default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs
    "fullgraph": False,
    "dynamic": None,  # None: torch decides (static first, dynamic after a shape changes)
}

MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile_options(options: Mapping[str, Any]) -> None:
    """Raise one ConfigError for a ``parallel.compile`` value torch.compile would reject deep inside."""
    if options["mode"] not in MODES:
        names = ", ".join(str(m) for m in MODES[1:])
        raise ConfigError(f"parallel.compile.mode must be one of {names} or null, got {options['mode']!r}")
    backends = torch.compiler.list_backends(exclude_tags=())
    if options["backend"] not in backends:
        raise ConfigError(f"parallel.compile.backend must be one of {', '.join(backends)}, got {options['backend']!r}")


def apply_compile(
    model: torch.nn.Module,
    modules: Sequence[str],
    backend: str = "inductor",
    mode: str | None = None,
    fullgraph: bool = False,
    dynamic: bool | None = None,
) -> torch.nn.Module:
    """Replace each module matched by ``modules`` with its ``torch.compile``-d self; returns ``model``.

    The compiled module keeps its path: checkpoints, patterns and pipeline plans name it as before
    (torch.distributed.checkpoint drops the ``_orig_mod`` segment the compiled wrapper adds).
    """
    if not modules:
        raise ConfigError(
            "parallel.compile is on but no module is named: set parallel.compile.modules (e.g. ['blocks.{*}']); "
            "this plugin's parallel_plan gives no fsdp_modules to default to"
        )
    options = {"backend": backend, "mode": mode, "fullgraph": fullgraph, "dynamic": dynamic}
    found = outermost(expand(modules, model, "parallel.compile.modules"))
    for _, module in found:
        replace_module(model, module, torch.compile(module, **options))
    described = ", ".join(f"{k}={v}" for k, v in options.items())
    log.info("compile: %d modules with torch.compile(%s)", len(found), described)
    return model
