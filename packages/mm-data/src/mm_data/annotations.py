"""Open-Sora-Plan's annotation format: a ``data.txt`` of ``root,annotation.json`` lines, or one annotation file.

Each annotation entry names a clip (``path``, relative to its root), its caption (``cap``: a string or a list whose
first item is used) and what the index knows about it: ``resolution`` {height, width}, ``fps``, ``num_frames``,
``aes`` (aesthetic score) and ``cut`` ([start, end] frames). Unknown keys are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm_core.errors import DataError


@dataclass(frozen=True)
class AnnotatedClip:
    """One annotation entry; metadata the entry lacks is None."""

    path: Path
    caption: str | None
    num_frames: int | None = None
    fps: float | None = None
    height: int | None = None
    width: int | None = None
    aes: float | None = None
    start_frame: int = 0


def _caption(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def _clip(entry: Any, root: Path, where: str) -> AnnotatedClip:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise DataError(f"{where}: expected an object with 'path' and 'cap'")
    resolution = entry.get("resolution") or {}
    if not isinstance(resolution, dict):
        raise DataError(f"{where}: resolution {resolution!r} is not {{'height': H, 'width': W}}")
    aes = entry.get("aesthetic", entry.get("aes"))
    cut = entry.get("cut") or [0]

    def number(value: Any, kind: type) -> Any:
        return kind(value) if value is not None else None

    return AnnotatedClip(
        path=root / entry["path"],
        caption=_caption(entry.get("cap")),
        num_frames=number(entry.get("num_frames"), int),
        fps=number(entry.get("fps"), float),
        height=number(resolution.get("height"), int),
        width=number(resolution.get("width"), int),
        aes=number(aes, float),
        start_frame=int(cut[0]),
    )


def _read_json(path: Path) -> list[tuple[str, Any]]:
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [(f"{path}:{n}", json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"annotation file {path} is not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise DataError(f"annotation file {path} must hold a JSON list of entries")
    return [(f"{path} entry {n}", entry) for n, entry in enumerate(entries)]


def read_annotations(data_path: str | Path, data_folder: str | Path | None = None) -> list[AnnotatedClip]:
    """Every clip of a data.txt (``root,annotation`` per line) or of one annotation .json / .jsonl.

    An annotation file alone has its clips under ``data_folder`` (default: the file's folder).
    """
    data_path = Path(data_path)
    if data_path.suffix != ".txt":
        root = Path(data_folder) if data_folder else data_path.parent
        return [_clip(entry, root, where) for where, entry in _read_json(data_path)]
    if not data_path.is_file():
        raise DataError(f"data.txt {data_path} does not exist")
    clips = []
    for n, line in enumerate(data_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        root, sep, annotation = (part.strip() for part in line.partition(","))
        if not sep:
            raise DataError(f"{data_path}:{n}: expected 'root,annotation.json', got {line.strip()!r}")
        clips += [_clip(entry, Path(root), where) for where, entry in _read_json(Path(annotation))]
    return clips
