"""MindSpeed-MM's ``--mm-tool`` file (tools.json) as mm settings: ``sorafeature.save_path`` is ``extract.output_dir``.

MindSpeed-MM's feature extraction (get_wan_feature.py, get_sora_feature.py) writes its features under
``sorafeature.save_path``; its profilers (``profile``, ``memory_profile``) have no counterpart in mm, so an enabled
one is named in a warning, as is every key MindSpeed-MM reads nowhere. Launch scripts name MindSpeed-MM's own
``./mindspeed_mm/tools/tools.json``: when the file is not there, a warning says so and nothing is set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mm_core.errors import ConfigError

FLAG = "--mm-tool"
FEATURES = "sorafeature"
# MindSpeed-MM's tools mm has no counterpart for, with what mm does instead.
PROFILERS = {
    "profile": "MindSpeed-MM's Ascend profiler; mm logs each step's time and memory",
    "memory_profile": "MindSpeed-MM's memory snapshot; mm logs each step's memory",
}
NOT_READ = "MindSpeed-MM reads it nowhere"


@dataclass
class Tools:
    """What a tools.json means to mm: ``(flag, candidate keys, value)`` settings and one warning line per unused
    part."""

    settings: list[tuple[str, tuple[str, ...], object]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def read_tools(path: str) -> Tools:
    """The settings and warnings of the tools.json at ``path`` (a ConfigError when it is no JSON object of tools)."""
    tools = Tools()
    file = Path(path)
    if not file.is_file():
        tools.ignored.append(f"{FLAG} {path}: no such file; accepted and ignored (MindSpeed-MM's tools.json, whose "
                             f"{FEATURES}.save_path would be extract.output_dir)")
        return tools
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{FLAG} {path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{FLAG} {path}: expected a JSON object of tools (profile, memory_profile, {FEATURES}), "
                          f"got {type(raw).__name__}")
    for name, block in raw.items():
        if name == FEATURES:
            _features(path, block, tools)
        elif name in PROFILERS:
            if _block(path, name, block).get("enable"):
                tools.ignored.append(f"{FLAG} {path}: {name}.enable: accepted and ignored ({PROFILERS[name]})")
        else:
            tools.ignored.append(f"{FLAG} {path}: {name}: accepted and ignored (not one of MindSpeed-MM's tools)")
    return tools


def _block(path: str, name: str, block: object) -> dict:
    if not isinstance(block, dict):
        raise ConfigError(f"{FLAG} {path}: {name} must be a JSON object, got {block!r}")
    return block


def _features(path: str, block: object, tools: Tools) -> None:
    """``sorafeature.save_path`` as extract.output_dir; its other keys warned."""
    for key, value in _block(path, FEATURES, block).items():
        if key != "save_path":
            tools.ignored.append(f"{FLAG} {path}: {FEATURES}.{key}: accepted and ignored ({NOT_READ})")
        elif not isinstance(value, str) or not value:
            raise ConfigError(f"{FLAG} {path}: {FEATURES}.save_path must be a folder path, got {value!r}")
        else:
            tools.settings.append((f"{FLAG} {FEATURES}.save_path", ("extract.output_dir",), value))
