"""Load run configs (YAML/JSON, section files, dotted overrides) and validate them against defaults."""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mm_core.errors import ConfigError

log = logging.getLogger("mm")

# Values that must be one of a fixed set, by dotted key.
CHOICES = {
    "training.lr_decay_style": ("cosine", "linear", "constant"),
    "parallel.cp.mode": ("ulysses", "ring", "usp"),
    "parallel.pp.schedule": ("1f1b", "interleaved_1f1b", "gpipe"),
    "data.on_bad_sample": ("skip", "error"),
    "parallel.recompute.granularity": (None, "full", "selective"),
    "parallel.recompute.method": ("uniform", "block"),
}

# Megatron's flag names, accepted where the config has their key (the seeds launch with them).
ALIASES = {
    "parallel.tensor-model-parallel-size": "parallel.tp.size",
    "parallel.sequence-parallel": "parallel.tp.sequence_parallel",
    "parallel.tp.tensor-model-parallel-size": "parallel.tp.size",
    "parallel.tp.sequence-parallel": "parallel.tp.sequence_parallel",
    "model.lora-r": "model.lora.rank",
    "model.lora-alpha": "model.lora.alpha",
    "model.lora-target-modules": "model.lora.target_modules",
}


@dataclass(frozen=True)
class Unused:
    """The default of a key that MindSpeed-MM's files carry and mm has no use for (an Ascend kernel switch, a
    Megatron detail): any value is accepted with a one-line warning naming the key and ``reason``, then dropped."""

    reason: str


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string; this loader reads it as the float users mean."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml(text: str):
    # MindSpeed-MM's published fsdp2_config.yaml ends lines in tabs, which PyYAML refuses.
    text = re.sub(r"[ \t]+$", "", text, flags=re.M)
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


class Config(dict):
    """A nested dict whose keys can also be read as attributes (``config.training.lr``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r} (keys: {', '.join(self)})") from None

    def __deepcopy__(self, memo: dict) -> Config:
        copied = wrap({k: copy.deepcopy(v, memo) for k, v in self.items()})
        copied.__dict__.update(self.__dict__)
        return copied

    def source_of(self, dotted: str) -> str | None:
        """The file (or override) that set the value at ``dotted``, or the nearest enclosing key it set.

        None for a default, or on a section of the config (only the root knows where its keys came from).
        """
        sources = self.__dict__.get("_sources", {})
        while dotted:
            if dotted in sources:
                return sources[dotted]
            dotted = dotted.rpartition(".")[0]
        return None

    def get_path(self, dotted: str, default: Any = None) -> Any:
        """The value at a dotted path such as ``training.lr``, or ``default``."""
        node: Any = self
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    def to_dict(self) -> dict:
        """A plain-dict deep copy, for printing and saving."""
        return json.loads(json.dumps(self, default=str))


def wrap(value: Any) -> Any:
    """Turn nested dicts into ``Config`` objects, recursively."""
    if isinstance(value, Mapping):
        return Config({k: wrap(v) for k, v in value.items()})
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def load_file(path: str | Path) -> dict:
    """Read a YAML or JSON mapping from ``path``, with one clear error if it is missing or malformed."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a regular file: give a YAML or JSON file")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else _yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, not a {type(data).__name__}")
    return data


def parse_override(text: str) -> dict:
    """Turn ``a.b.c=value`` into ``{"a": {"b": {"c": value}}}``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: dict = {}
    root = node
    parts = key.split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return root


def deep_merge(base: Mapping, update: Mapping) -> dict:
    """A new dict: ``update`` merged over ``base``, dicts merged key by key, anything else replaced."""
    out = {k: copy.deepcopy(v) for k, v in base.items()}
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# (type of the default, how to name it, types accepted for it); bool comes before int on purpose.
_KINDS = (
    (bool, "a boolean", (bool,)),
    (int, "an integer", (int,)),
    (float, "a number", (int, float)),
    (str, "a string", (str,)),
    (list, "a list", (list,)),
    (Mapping, "a mapping", (Mapping,)),
)


def _kind(value: Any) -> tuple | None:
    return next((k for k in _KINDS if isinstance(value, k[0])), None)


def _type_name(value: Any) -> str:
    kind = _kind(value)
    return kind[1] if kind else f"a {type(value).__name__}"


def _type_ok(default: Any, value: Any) -> bool:
    kind = _kind(default)
    if default is None or value is None or kind is None:
        return True
    accepted = kind[2]
    return isinstance(value, accepted) and (bool in accepted or not isinstance(value, bool))


def validate(layer: Mapping, schema: Mapping, source: str, prefix: str = "",
             unused: list[tuple[str, str]] | None = None) -> None:
    """Check every key of ``layer`` exists in ``schema`` with a compatible type; raise one ConfigError.

    A key whose default is None takes any value; an empty mapping as default takes any keys. Keys whose default
    is :class:`Unused` go to ``unused`` as ``(key, reason)``.
    """
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            known = ", ".join(str(k) for k in schema) or "none"
            raise ConfigError(f"{source}: unknown key {dotted!r}{hint} (known here: {known})")
        default = schema[key]
        if isinstance(default, Unused):
            if unused is not None and value is not None:  # null: the file does not use it either
                unused.append((dotted, default.reason))
            continue
        if not _type_ok(default, value):
            raise ConfigError(
                f"{source}: {dotted} must be {_type_name(default)} (like {default!r}), "
                f"got {_type_name(value)} {value!r}"
            )
        if dotted in CHOICES and value not in CHOICES[dotted]:
            allowed = ", ".join(map(str, CHOICES[dotted]))
            raise ConfigError(f"{source}: {dotted} must be one of {allowed}, got {value!r}")
        if isinstance(default, Mapping) and default and isinstance(value, Mapping):
            validate(value, default, source, prefix=f"{dotted}.", unused=unused)


def warn_unused(unused: list[tuple[str, str]], source: str) -> None:
    """One warning line per reason, naming the keys of ``source`` accepted and ignored for it (on rank 0)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    by_reason: dict[str, list[str]] = {}
    for key, reason in unused:
        by_reason.setdefault(reason, []).append(key)
    for reason, keys in by_reason.items():
        log.warning("warning: %s: accepted and ignored (%s): %s", source, reason, ", ".join(keys))


def apply_aliases(layer: Mapping, source: str) -> dict:
    """``layer`` with Megatron's key names (``ALIASES``) renamed to mm's; giving both is one ConfigError."""
    out = copy.deepcopy(dict(layer))
    for alias, key in ALIASES.items():
        *parents, name = alias.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, Mapping) else None
        if not isinstance(node, dict) or name not in node:
            continue
        value = node.pop(name)
        *target_parents, target = key.split(".")
        holder = out
        for part in target_parents:
            holder = holder.setdefault(part, {})
            if not isinstance(holder, dict):
                raise ConfigError(f"{source}: {'.'.join(target_parents)} must be a mapping to take {alias}")
        if target in holder and holder[target] != value:
            raise ConfigError(f"{source}: {alias} ({value!r}) and {key} ({holder[target]!r}) disagree; give one")
        holder[target] = value
    return out


def _switch_on_enabled_sections(layer: Mapping, schema: Mapping) -> dict:
    """Setting any key of a section that has ``enable: false`` by default turns that section on."""
    out = dict(layer)
    for key, value in layer.items():
        default = schema.get(key)
        if isinstance(value, Mapping) and isinstance(default, Mapping):
            sub = _switch_on_enabled_sections(value, default)
            if default.get("enable") is False and "enable" not in sub and sub:
                sub["enable"] = True
            out[key] = sub
    return out


def build_config(
    defaults: Mapping,
    files: list[str | Path] = (),
    section_files: Mapping[str, str | Path] | None = None,
    overrides: list[str] = (),
) -> Config:
    """Merge defaults ← run config files ← section files ← dotted overrides, validating each layer.

    ``section_files`` maps a dotted section (``model``, ``data``, ``parallel.fsdp2``) to a file
    holding just that section, as MindSpeed-MM's model.json / data.json / fsdp2_config.yaml do.
    """
    layers: list[tuple[str, dict]] = [(str(f), load_file(f)) for f in files]
    for section, path in (section_files or {}).items():
        content: dict = load_file(path)
        for part in reversed(section.split(".")):
            content = {part: content}
        layers.append((str(path), content))
    layers += [(f"override {o!r}", parse_override(o)) for o in overrides]
    merged = dict(defaults)
    sources: dict[str, str] = {}
    for source, layer in layers:
        layer = apply_aliases(layer, source)
        unused: list[tuple[str, str]] = []
        validate(layer, defaults, source, unused=unused)
        warn_unused(unused, source)
        merged = deep_merge(merged, _switch_on_enabled_sections(layer, defaults))
        sources.update(dict.fromkeys(_leaf_keys(layer), source))
    config = wrap(_drop_unused(merged, defaults))
    config.__dict__["_sources"] = sources
    return config


def _drop_unused(merged: Mapping, schema: Mapping) -> dict:
    """``merged`` without the keys whose default is :class:`Unused` (given or not): no code reads them."""
    out = {}
    for key, value in merged.items():
        default = schema.get(key) if isinstance(schema, Mapping) else None
        if isinstance(default, Unused) or isinstance(value, Unused):
            continue
        out[key] = _drop_unused(value, default) if isinstance(value, Mapping) and isinstance(default, Mapping) \
            else value
    return out


def _leaf_keys(layer: Mapping, prefix: str = "") -> list[str]:
    """The dotted paths of a layer's values that are not mappings."""
    keys = []
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        keys += _leaf_keys(value, f"{dotted}.") if isinstance(value, Mapping) and value else [dotted]
    return keys


def dump(config: Mapping) -> str:
    """The config as YAML text, keys in their defined order."""
    plain = config.to_dict() if isinstance(config, Config) else json.loads(json.dumps(config, default=str))
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=False)
