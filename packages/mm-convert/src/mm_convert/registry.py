"""The converters of every installed plugin: declared in entry-point metadata, loaded by ``register_converters``."""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys

from mm_convert.converter import Converter
from mm_convert.errors import ConvertError
from mm_core.entry_points import declared, summary, target_node
from mm_core.plugins import PLUGIN_GROUP, new_plugin_manager

CONVERTER_GROUP = "mm.converters"


class Registry(dict):
    """Converter name -> Converter subclass; plugins fill it in their ``register_converters`` hook."""

    def add(self, converter: type[Converter]) -> None:
        """Register ``converter`` under its ``name``; two different classes with one name is an error."""
        if not (isinstance(converter, type) and issubclass(converter, Converter) and converter.name):
            raise ConvertError(f"{converter!r} is not a named mm_convert.Converter subclass")
        known = self.get(converter.name)
        if known is not None and known is not converter:
            raise ConvertError(f"converter {converter.name!r} is registered twice: {known} and {converter}")
        self[converter.name] = converter


def collect_converters() -> Registry:
    """Every installed plugin's converters; a plugin that fails to import is reported and skipped."""
    pm = new_plugin_manager()
    for ep in md.entry_points(group=PLUGIN_GROUP):
        try:
            module = ep.load()
        except Exception as exc:  # one broken plugin must not hide the others' converters
            print(f"warning: plugin {ep.name!r} ({ep.value}) failed to import, its converters are missing: {exc}",
                  file=sys.stderr)
            continue
        if not pm.is_registered(module):
            pm.register(module, name=ep.name)
    registry = Registry()
    pm.hook.register_converters(registry=registry)
    return registry


def declared_converters() -> dict[str, str]:
    """Converter name -> one-line description, from the ``mm.converters`` entry points without importing them."""
    return {entry.name: _description(entry.value) for entry in declared(CONVERTER_GROUP)}


def _description(value: str) -> str:
    """The ``description = "..."`` in the source of converter class ``value``, else its docstring's first line."""
    for stmt in getattr(target_node(value), "body", []):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
        text = getattr(stmt, "value", None)
        if (any(isinstance(t, ast.Name) and t.id == "description" for t in targets)
                and isinstance(text, ast.Constant) and isinstance(text.value, str)):
            return text.value
    return summary(value)
