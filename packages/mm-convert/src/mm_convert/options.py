"""Subcommand options: a dataclass per subcommand, filled from ``--cfg.a.b VALUE`` or ``--a-b VALUE`` flags."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from mm_convert.errors import ConvertError

REQUIRED = dataclasses.MISSING


def option(default: Any = REQUIRED, help: str = "") -> Any:  # noqa: A002 (the natural name here)
    """A dataclass field with a help line; no default means the option is required."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: default.copy(), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def flag_name(token: str) -> str:
    """The dotted option name of ``--cfg.a.b`` / ``--a-b`` / ``--a_b``."""
    name = token[2:]
    name = name[4:] if name.startswith("cfg.") else name
    return name.replace("-", "_")


# MindSpeed-MM's option names -> mm's, tried in order where a subcommand has the mm name and not MindSpeed-MM's
# (its sora converters share one ConvertConfig: source_path, target_path, hf_dir, target_parallel_config.pp_layers).
OPTION_ALIASES: dict[str, tuple[str, ...]] = {
    "target_parallel_config.pp_layers": ("pp_vpp_layers",),
    "hf_dir": ("ckpt_path",),
}


def resolve_aliases(flags: dict[str, Any], cls: type) -> dict[str, Any]:
    """``flags`` with MindSpeed-MM's option names renamed to those of ``cls`` (the subcommand's options)."""
    known = {name for name, _, _, _ in option_fields(cls)}
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for name, value in flags.items():
        target = next((t for t in OPTION_ALIASES.get(name, ()) if name not in known and t in known), name)
        if target in out:
            first, second = sorted((given_as[target], name), key=lambda n: n == target)
            raise ConvertError(f"--cfg.{first} and --cfg.{second} name the same option; give one")
        out[target], given_as[target] = value, name
    return out


def config_file_flags(path: str) -> dict[str, Any]:
    """The options of a jsonargparse-style ``--config`` YAML file (``cfg: {source_path: ..., ...}``), flattened."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConvertError(f"--config {path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConvertError(f"--config {path}: not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise ConvertError(f"--config {path}: expected a mapping of options (cfg: {{...}})")
    loaded = loaded.get("cfg", loaded) if isinstance(loaded.get("cfg", loaded), dict) else loaded
    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            elif value is not None:
                flat[f"{prefix}{key}"] = value if isinstance(value, str) else yaml.safe_dump(
                    value, default_flow_style=True).strip().removesuffix("...").strip()
    walk(loaded, "")
    return flat


def options_yaml(opts: Any) -> str:
    """Parsed options as the ``--config`` file that gives them (``--print_config``)."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return str(value) if isinstance(value, Path) else value
    return yaml.safe_dump({"cfg": plain(opts)}, sort_keys=False).rstrip()


def parse_flags(tokens: list[str]) -> dict[str, str]:
    """``["--cfg.a.b", "1", "--c=x"]`` -> ``{"a.b": "1", "c": "x"}``; every option needs a value."""
    flags: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise ConvertError(f"unexpected argument {token!r}: options are --cfg.NAME VALUE or --NAME VALUE")
        if "=" in token:
            name, value = token.split("=", 1)
            i += 1
        elif i + 1 < len(tokens):
            name, value = token, tokens[i + 1]
            i += 2
        else:
            raise ConvertError(f"option {token} needs a value")
        flags[flag_name(name)] = value
    return flags


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parts(kind: Any) -> tuple[Any, ...]:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return typing.get_args(kind)
    return (kind,)


def type_name(kind: Any) -> str:
    """A short name for an option's type: ``path``, ``int``, ``list or none``."""
    names = []
    for part in _parts(kind):
        base = typing.get_origin(part) or part
        names.append({type(None): "none", Path: "path"}.get(base, getattr(base, "__name__", str(base))))
    return " or ".join(names)


def option_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """Every option of ``cls`` (nested dataclasses flattened): (dotted name, type, default, help)."""
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out += option_fields(kind, f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default_factory is not REQUIRED else f.default
        out.append((prefix + f.name, kind, default, f.metadata.get("help", "")))
    return out


def _convert(name: str, kind: Any, raw: str) -> Any:
    parts = _parts(kind)
    if raw.strip().lower() in ("none", "null", "~") and type(None) in parts:
        return None
    if Path in parts:
        return Path(raw)
    if str in parts:
        return raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, int) and not isinstance(value, bool) and float in parts:
        value = float(value)
    if not any(isinstance(value, typing.get_origin(p) or p) for p in parts if p is not type(None)):
        raise ConvertError(f"--cfg.{name} expects {type_name(kind)}, got {raw!r}")
    return value


def build_options(cls: type, flags: dict[str, str], where: str) -> Any:
    """An instance of ``cls`` from parsed flags; unknown names and missing required options are errors."""
    known = {name: (kind, default) for name, kind, default, _ in option_fields(cls)}
    for name in flags:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
            hint = f" (did you mean --cfg.{close[0]}?)" if close else f" (options: {', '.join(known)})"
            raise ConvertError(f"unknown option --cfg.{name} for {where}{hint}")
    missing = [name for name, (_, default) in known.items() if default is REQUIRED and name not in flags]
    if missing:
        raise ConvertError(f"{where} needs {', '.join('--cfg.' + m for m in missing)}")
    values = {name: _convert(name, known[name][0], raw) for name, raw in flags.items()}
    return _instantiate(cls, values, "")


def _instantiate(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _instantiate(hints[f.name], values, f"{prefix}{f.name}.")
        elif prefix + f.name in values:
            kwargs[f.name] = values[prefix + f.name]
    return cls(**kwargs)
