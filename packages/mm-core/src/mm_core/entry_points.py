"""Entry points read from installed metadata, and their targets' docstrings read from source without importing."""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path


@dataclass(frozen=True)
class Declared:
    """One entry point: its name, its target (``module`` or ``module:attr``) and the distribution declaring it."""

    name: str
    value: str
    package: str
    version: str


def declared(group: str) -> list[Declared]:
    """The entry points of ``group`` in every installed distribution, sorted by name; nothing is imported."""
    found = [Declared(ep.name, ep.value, ep.dist.name if ep.dist else "?", ep.dist.version if ep.dist else "?")
             for ep in md.entry_points(group=group)]
    return sorted(found, key=lambda d: d.name)


def summary(value: str) -> str:
    """The first line of the docstring of entry-point target ``value``, read from its source ("" when none).

    reST's double backticks are dropped: the line is printed on a terminal.
    """
    node = target_node(value)
    doc = ast.get_docstring(node) if node is not None else None
    return doc.strip().splitlines()[0].replace("``", "") if doc else ""


def target_node(value: str) -> ast.Module | ast.ClassDef | ast.FunctionDef | None:
    """The syntax tree of entry-point target ``value``: the module, or its top-level class or function ``attr``."""
    module, _, attr = value.partition(":")
    tree = _parsed_source(module.strip())
    if tree is None or not attr:
        return tree
    name = attr.split("[", 1)[0].strip()
    return next((node for node in tree.body
                 if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name), None)


def _parsed_source(module: str) -> ast.Module | None:
    """``module``'s source parsed, found the way ``import`` finds it but running none of its packages' code."""
    spec, path = None, None
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        spec = _find_spec(".".join(parts[:depth]), path)
        if spec is None:
            return None
        path = spec.submodule_search_locations
    if spec is None or not spec.has_location or not str(spec.origin).endswith(".py"):
        return None
    try:
        return ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None


def _find_spec(name: str, path: list[str] | None) -> ModuleSpec | None:
    loaded = sys.modules.get(name)
    if loaded is not None:
        return getattr(loaded, "__spec__", None)
    if "." in name and path is None:  # the parent is a plain module: nothing below it
        return None
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        spec = find(name, path) if find else None
        if spec is not None:
            return spec
    return None
