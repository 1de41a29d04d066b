"""Module path patterns of the seeds' fsdp2_config.yaml: ``blocks.{*}``, ``layers.{0-23}``, ``layers.{1,3,5}``."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import _CHECKPOINT_WRAPPED_MODULE

from mm_core.errors import ConfigError

_BRACES = re.compile(r"\{([^{}]*)\}")


# Path segments added by the wrappers of activation checkpointing and torch.compile.
WRAPPER_SEGMENTS = (_CHECKPOINT_WRAPPED_MODULE, "_orig_mod")


def clean_name(name: str) -> str:
    """``name`` without the segments wrappers add: the path the user writes."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_SEGMENTS)


def named_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Modules by their path as the user writes it: checkpoint and compile wrappers add no path segment.

    A wrapped block is listed under its own path as the (outermost) wrapper, so patterns resolve the
    same before and after :func:`mm_parallel.recompute.apply_recompute` and
    :func:`mm_parallel.compile.apply_compile`.
    """
    found: dict[str, torch.nn.Module] = {}
    for name, module in model.named_modules():
        found.setdefault(clean_name(name), module)
    return found


def replace_module(model: torch.nn.Module, old: torch.nn.Module, new: torch.nn.Module) -> None:
    """Put ``new`` where ``old`` is a child, inside any wrapper around its parent."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if child is old:
                parent.register_module(child_name, new)
                return
    raise ValueError(f"{type(old).__name__} is not a submodule of {type(model).__name__}")


def _brace_regex(body: str, pattern: str, option: str) -> str:
    """A regex for the inside of ``{...}``: ``*``, a range ``a-b`` or a list ``a,b,c`` (of ranges)."""
    body = body.replace(" ", "")
    if body == "*":
        return r"[^.]+"
    numbers: set[int] = set()
    for part in body.split(","):
        bounds = part.split("-")
        if len(bounds) > 2 or not all(b.isdigit() for b in bounds) or int(bounds[0]) > int(bounds[-1]):
            raise ConfigError(
                f"{option}: pattern {pattern!r} has {{{body}}}; write {{*}}, a range like {{0-23}} "
                "or a list like {1,3,5}"
            )
        numbers.update(range(int(bounds[0]), int(bounds[-1]) + 1))
    return "(?:" + "|".join(str(n) for n in sorted(numbers)) + ")"


def compile_pattern(pattern: str, option: str = "pattern") -> re.Pattern:
    """The regex matching the module paths that ``pattern`` names."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError(f"{option}: {pattern!r} is not a module path pattern like 'blocks.{{*}}'")
    # re.split with a group alternates literal text (even indices) and brace bodies (odd indices).
    pieces = _BRACES.split(pattern.strip())
    regex = "".join(_brace_regex(p, pattern, option) if i % 2 else re.escape(p) for i, p in enumerate(pieces))
    return re.compile(regex + r"\Z")


def _close_names(pattern: str, names: list[str]) -> list[str]:
    """Module paths a user probably meant: similar ones, else the children of the longest existing prefix."""
    probe = _BRACES.sub("0", pattern)
    close = set(difflib.get_close_matches(probe, names, n=5, cutoff=0.6))
    if close:
        return [n for n in names if n in close]
    parts = probe.split(".")
    prefixes = (".".join(parts[:cut]) for cut in range(len(parts) - 1, -1, -1))
    prefix = next(p for p in prefixes if p in names)  # the root's path "" is always there
    return [n for n in names if n and n.rpartition(".")[0] == prefix][:10]


def expand(
    patterns: Iterable[str], model: torch.nn.Module, option: str = "parallel.fsdp2"
) -> list[tuple[str, torch.nn.Module]]:
    """The (path, module) pairs named by ``patterns``, in module order; a pattern matching nothing is an error."""
    modules = named_modules(model)
    names = list(modules)
    matched: dict[str, torch.nn.Module] = {}
    for pattern in patterns:
        regex = compile_pattern(pattern, option)
        hits = [n for n in names if n and regex.match(n)]
        if not hits:
            close = _close_names(pattern.strip(), names)
            hint = f"; modules with similar paths: {', '.join(close)}" if close else ""
            raise ConfigError(f"{option}: pattern {pattern!r} matches no module of {type(model).__name__}{hint}")
        matched.update((n, modules[n]) for n in hits)
    return [(n, matched[n]) for n in names if n in matched]


def outermost(found: list[tuple[str, torch.nn.Module]]) -> list[tuple[str, torch.nn.Module]]:
    """Drop the entries nested inside another entry (``blocks.0.attn`` when ``blocks.0`` is there too)."""
    kept: list[tuple[str, torch.nn.Module]] = []
    for name, module in found:
        if not any(name.startswith(k + ".") for k, _ in kept):
            kept.append((name, module))
    return kept


def with_aliases(patterns: Iterable[str], aliases: Mapping[str, str]) -> list[str]:
    """``patterns`` with a leading path of ``aliases`` (MindSpeed-MM's module names; the longest that matches up to
    a dot) replaced by the model's: ``text_decoder.decoder.layers.{*}`` -> ``model.language_model.layers.{*}``."""
    out = []
    for pattern in patterns:
        for alias in sorted(aliases, key=len, reverse=True):
            if pattern == alias or pattern.startswith(alias + "."):
                pattern = aliases[alias] + pattern[len(alias):]
                break
        out.append(pattern)
    return out
