"""Find, load and check mm plugins."""

from __future__ import annotations

import importlib
import importlib.metadata as md
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pluggy

from mm_core import hookspecs
from mm_core.config import Config, build_config, deep_merge
from mm_core.entry_points import Declared, declared
from mm_core.errors import PluginError

PLUGIN_GROUP = "mm.plugins"
ENGINE_GROUP = "mm.engines"
DEFAULTS = "mm_core.defaults"
REQUIRED_HOOKS = ("model_provider", "datasets_provider", "loss_func")


def installed_plugins() -> list[Declared]:
    """The plugins installed under the ``mm.plugins`` entry-point group, sorted by name; none is imported."""
    return declared(PLUGIN_GROUP)


def _installed_names() -> str:
    names = [p.name for p in installed_plugins()]
    return ", ".join(names) if names else "none"


def _load_module(name: str) -> object:
    eps = {ep.name: ep for ep in md.entry_points(group=PLUGIN_GROUP)}
    if name in eps:
        try:
            return eps[name].load()
        except Exception as exc:  # a plugin failing at import is the plugin's bug: say which one
            raise PluginError(f"plugin {name!r} ({eps[name].value}) failed to import: {exc}") from exc
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if not (exc.name and (name == exc.name or name.startswith(exc.name + "."))):
            raise PluginError(f"plugin module {name!r} failed to import: {exc}") from exc
    except (ImportError, TypeError, ValueError):
        pass
    raise PluginError(
        f"unknown plugin {name!r}: it is neither an installed plugin (installed: {_installed_names()}) "
        "nor an importable module path"
    )


def new_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager with mm's hookspecs, mm-core's defaults and the installed engines."""
    from mm_core import defaults  # it imports torch: imported here, `mm plugins` and `mm --help` stay instant

    pm = pluggy.PluginManager("mm")
    pm.add_hookspecs(hookspecs)
    pm.register(defaults, name=DEFAULTS)
    for ep in md.entry_points(group=ENGINE_GROUP):
        if pm.has_plugin(ep.name):
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:
            raise PluginError(f"engine {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
    return pm


def hooks_of(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """The hook names ``plugin`` implements, sorted."""
    return sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])


def load_plugins(names: list[str | ModuleType], pm: pluggy.PluginManager | None = None) -> pluggy.PluginManager:
    """Register the named plugins in order (later ones win) and check the hook contract.

    Each name is an entry point of group ``mm.plugins`` or a dotted module path;
    a module object may be passed directly too.
    """
    if not names:
        raise PluginError(f"no plugin given: pass --plugin NAME (installed: {_installed_names()})")
    pm = pm or new_plugin_manager()
    for name in names:
        if isinstance(name, str):
            label, plugin = name, _load_module(name)
        else:
            label, plugin = getattr(name, "__name__", repr(name)), name
        if pm.is_registered(plugin):
            continue
        try:
            pm.register(plugin, name=label)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {label!r} is invalid: {exc}") from exc
        if not pm.get_hookcallers(plugin):
            raise PluginError(f"plugin {label!r} implements no mm hook: mark its hook functions with @mm_core.hookimpl")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        known = ", ".join(sorted(hook_names()))
        raise PluginError(f"{exc} (known hooks: {known})") from exc
    missing = [h for h in REQUIRED_HOOKS if not _implemented_outside_defaults(pm, h)]
    if missing:
        plugins = ", ".join(n if isinstance(n, str) else n.__name__ for n in names)
        raise PluginError(
            f"plugin(s) {plugins} do not implement required hook(s): {', '.join(missing)} "
            f"(installed plugins: {_installed_names()})"
        )
    return pm


@dataclass(frozen=True)
class HookCallers:
    """One hook of a plugin stack: whether it stops at the first result, and who implements it, in call order."""

    name: str
    firstresult: bool
    plugins: list[str]


def call_order(pm: pluggy.PluginManager) -> list[HookCallers]:
    """Every mm hook, in the order the hookspecs define them, with its implementers in the order pluggy calls them.

    Later registered plugins come first, mm-core's defaults (trylast) last; a firstresult hook is answered by the
    first of them that returns something other than None.
    """
    hooks = []
    for name in hook_names():
        caller = getattr(pm.hook, name)
        plugins = [impl.plugin_name for impl in reversed(caller.get_hookimpls())]
        hooks.append(HookCallers(name, bool(caller.spec and caller.spec.opts.get("firstresult")), plugins))
    return hooks


def hook_names() -> list[str]:
    """The names of mm's hookspecs, in the order hookspecs.py defines them."""
    return [name for name, value in vars(hookspecs).items() if not name.startswith("_") and hasattr(value, "mm_spec")]


def plugin_stack(pm: pluggy.PluginManager) -> list[str]:
    """The names of the plugins registered in ``pm``, in order, without mm-core's defaults and the engines."""
    engines = {ep.name for ep in md.entry_points(group=ENGINE_GROUP)}
    return [name for name, _ in pm.list_name_plugin() if name != DEFAULTS and name not in engines]


def _implemented_outside_defaults(pm: pluggy.PluginManager, hook: str) -> bool:
    caller = getattr(pm.hook, hook)
    return any(impl.plugin_name != DEFAULTS for impl in caller.get_hookimpls())


def merged_defaults(pm: pluggy.PluginManager, task: str) -> dict:
    """Every registered plugin's default_config merged in registration order (mm-core first).

    A plugin's model schema gets ``model.lora`` (off); an empty one, which takes any keys, takes it as it is.
    """
    from mm_core.lora import DEFAULTS as LORA

    merged: dict = {}
    for partial in reversed(pm.hook.default_config(task=task)):
        merged = deep_merge(merged, partial or {})
    if merged.get("model"):
        model = merged["model"]
        merged["model"] = {**model, "lora": deep_merge(LORA, model.get("lora") or {})}  # after the plugin's keys
    return merged


def make_config(
    pm: pluggy.PluginManager,
    task: str = "run",
    files: Sequence[str | Path] = (),
    sections: Mapping[str, str | Path] | None = None,
    overrides: Sequence[str] = (),
    plugin_name: str = "mm",
) -> Config:
    """The validated effective config: plugin defaults ← files ← section files ← overrides."""
    config = build_config(merged_defaults(pm, task), list(files), sections, list(overrides))
    if not config.training.get("output_dir"):
        config.training["output_dir"] = str(Path("runs") / plugin_name.rsplit(".", 1)[-1])
    return config
