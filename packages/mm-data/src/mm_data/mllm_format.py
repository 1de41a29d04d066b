"""MindSpeed-MM's ``mllm_format`` conversation datasets and the conversion from LLaVA-Instruct's format.

An mllm_format file is a JSON list (or a .jsonl) of records such as::

    {"images": ["COCO2017/train2017/1.jpg"],
     "messages": [{"role": "user", "content": "<image>\\nWhat is this?"},
                  {"role": "assistant", "content": "A cat."}]}

``<image>`` / ``<video>`` placeholders in the text mark where each entry of ``images`` / ``videos``
goes, in order. Key and role names follow the ``attr`` block of a data.json.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm_core.errors import DataError
from mm_data.bad_samples import BadSamples

PLACEHOLDERS = {"<image>": "image", "<video>": "video"}
_PLACEHOLDER_RE = re.compile("(" + "|".join(re.escape(p) for p in PLACEHOLDERS) + ")")

# The ``attr`` block of MindSpeed-MM's data.json, with its defaults; None means: the dataset has no such key.
DEFAULT_ATTR: dict[str, Any] = {
    "system": None,
    "images": "images",
    "videos": None,
    "messages": "messages",
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": None,
    "function_tag": None,
    "system_tag": None,
}


@dataclass(frozen=True)
class MllmRecord:
    """One conversation: alternating user/assistant turns, an optional system prompt and its media files."""

    messages: list[dict[str, str]]
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    system: str | None = None
    source: str = ""

    def chat(self) -> list[dict[str, Any]]:
        """The conversation in Hugging Face chat-template form: content lists of text, image and video parts."""
        turns = [{"role": "system", "content": [{"type": "text", "text": self.system}]}] if self.system else []
        for message in self.messages:
            parts = [
                {"type": PLACEHOLDERS[piece]} if piece in PLACEHOLDERS else {"type": "text", "text": piece}
                for piece in _PLACEHOLDER_RE.split(message["content"])
                if piece
            ]
            turns.append({"role": message["role"], "content": parts})
        return turns


def resolve_media(path: str, dataset_dir: Path) -> Path:
    """The absolute path of a media file written as absolute, relative to ``dataset_dir``, or relative to the cwd."""
    candidate = Path(path)
    under_dir = dataset_dir / candidate
    if candidate.is_absolute() or under_dir.exists() or not candidate.exists():
        return under_dir.absolute()
    return candidate.absolute()


def _media(entry: Mapping, key: str | None, dataset_dir: Path, where: str) -> list[Path]:
    if key is None or entry.get(key) is None:
        return []
    value = entry[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: {key!r} must be a list of file paths")
    return [resolve_media(v, dataset_dir) for v in value]


def parse_record(entry: Any, dataset_dir: Path, attr: Mapping[str, Any], where: str) -> MllmRecord:
    """Validate one raw record into an MllmRecord; a malformed one is a one-line DataError naming ``where``."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with {attr['messages']!r}, got {type(entry).__name__}")
    raw_messages = entry.get(attr["messages"])
    if not isinstance(raw_messages, list) or not raw_messages:
        raise DataError(f"{where}: {attr['messages']!r} must be a non-empty list of turns")
    roles = {attr["user_tag"]: "user", attr["assistant_tag"]: "assistant"}
    if attr.get("system_tag"):
        roles[attr["system_tag"]] = "system"
    system = entry.get(attr["system"]) if attr.get("system") else None
    messages = []
    for n, turn in enumerate(raw_messages):
        role = turn.get(attr["role_tag"]) if isinstance(turn, dict) else None
        content = turn.get(attr["content_tag"]) if isinstance(turn, dict) else None
        if role not in roles or not isinstance(content, str):
            raise DataError(
                f"{where}: turn {n} must have {attr['role_tag']!r} in {sorted(roles)} and a string "
                f"{attr['content_tag']!r}, got {turn!r:.120}"
            )
        if roles[role] == "system" and n == 0:
            system = content
            continue
        messages.append({"role": roles[role], "content": content})
    expected = ["user", "assistant"] * (len(messages) // 2)
    if [m["role"] for m in messages] != expected or not messages:
        raise DataError(f"{where}: turns must alternate user, assistant and end with the assistant")
    record = MllmRecord(
        messages=messages,
        images=_media(entry, attr.get("images"), dataset_dir, where),
        videos=_media(entry, attr.get("videos"), dataset_dir, where),
        system=system if isinstance(system, str) and system else None,
        source=where,
    )
    text = "".join(m["content"] for m in messages)
    for placeholder, files, key in (("<image>", record.images, "images"), ("<video>", record.videos, "videos")):
        if text.count(placeholder) != len(files):
            raise DataError(
                f"{where}: {text.count(placeholder)} {placeholder} placeholder(s) but {len(files)} {key} "
                f"(attr.{key} is {attr.get(key)!r})"
            )
    return record


def _entries(path: Path) -> Iterable[tuple[str, Any]]:
    """``(where, entry)`` per record; a .jsonl line that is not JSON comes as a DataError to skip or raise."""
    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [(f"{path}:{n}", _json_line(line, f"{path}:{n}")) for n, line in enumerate(text.splitlines(), 1)
                if line.strip()]
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"dataset file {path} is not valid JSON: {exc}") from None
    if not isinstance(loaded, list):
        raise DataError(f"dataset file {path} must hold a JSON list of records")
    return [(f"{path} record {n}", entry) for n, entry in enumerate(loaded)]


def _json_line(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return DataError(f"{where}: not valid JSON: {exc}")


def read_mllm_dataset(
    dataset: str,
    dataset_dir: str | Path = ".",
    attr: Mapping[str, Any] | None = None,
    max_samples: int | None = None,
    bad: BadSamples | None = None,
) -> list[MllmRecord]:
    """Read the comma-separated mllm_format files of ``dataset``; media paths resolve against ``dataset_dir``.

    A malformed record goes to ``bad`` (skipped and counted under ``on_bad_sample: skip``, as MindSpeed-MM
    skips it); without ``bad`` it is an error.
    """
    attr = {**DEFAULT_ATTR, **{k: v for k, v in (attr or {}).items() if k in DEFAULT_ATTR}}
    bad = bad or BadSamples("error")
    records: list[MllmRecord] = []
    for name in (part.strip() for part in dataset.split(",")):
        for where, entry in _entries(Path(name)) if name else ():
            try:
                if isinstance(entry, DataError):
                    raise entry
                records.append(parse_record(entry, Path(dataset_dir), attr, where))
            except DataError as exc:
                bad.skip(exc)
    if not records:
        raise DataError(f"dataset {dataset!r} holds no records")
    return records[:max_samples] if max_samples else records


LLAVA_ROLES = {"human": "user", "gpt": "assistant"}


def llava_to_mllm(items: list[dict], image_dir: str) -> tuple[list[dict], int]:
    """Convert LLaVA-Instruct records (``image``, ``conversations`` of from/value) to mllm_format.

    Image paths become ``image_dir/<image>``; records whose image file is missing are skipped,
    as MindSpeed-MM's llava_instruct_2_mllm_demo_format.py does. Returns (records, skipped).
    """
    converted, skipped = [], 0
    for n, item in enumerate(items):
        images = []
        if item.get("image"):
            path = str(Path(image_dir) / item["image"])
            if not Path(path).exists():
                skipped += 1
                continue
            images.append(path)
        messages = []
        for turn in item.get("conversations", []):
            if turn.get("from") not in LLAVA_ROLES:
                raise DataError(f"LLaVA record {n}: unknown role {turn.get('from')!r} (expected human or gpt)")
            messages.append({"role": LLAVA_ROLES[turn["from"]], "content": turn["value"]})
        converted.append({"images": images, "messages": messages})
    return converted, skipped
