"""MindSpeed-MM data formats: video index files (data.json, .jsonl, data.txt) and data.json parameter blocks."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_type_hints

from mm_core.config import Config
from mm_core.errors import ConfigError, DataError


@dataclass(frozen=True)
class VideoRecord:
    """One entry of a video index: file, caption and the metadata the index states (None when absent)."""

    path: Path
    caption: Any
    num_frames: int | None = None
    fps: float | None = None
    height: int | None = None
    width: int | None = None

    @property
    def shape(self) -> tuple[int | None, int | None, int | None]:
        """(num_frames, height, width) as the index states them, for bucketing without decoding."""
        return (self.num_frames, self.height, self.width)


# Keys other MindSpeed-MM indexes use for the same fields (stepvideo's data.jsonl: file, captions).
PATH_KEYS = ("path", "file")
CAPTION_KEYS = ("cap", "captions")


def _resolution(value: Any, where: str) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    if isinstance(value, dict) and {"height", "width"} <= value.keys():
        return int(value["height"]), int(value["width"])
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise DataError(f"{where}: resolution {value!r} is not {{'height': H, 'width': W}} or [H, W]")


def _record(entry: Any, data_folder: Path, where: str) -> VideoRecord:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with path and cap, got {type(entry).__name__}")
    path = next((entry[k] for k in PATH_KEYS if k in entry), None)
    if not isinstance(path, str):
        raise DataError(f"{where}: missing the video path (key 'path')")
    height, width = _resolution(entry.get("resolution"), where)
    num_frames, fps = entry.get("num_frames"), entry.get("fps")
    return VideoRecord(
        path=data_folder / path,
        caption=next((entry[k] for k in CAPTION_KEYS if k in entry), None),
        num_frames=int(num_frames) if num_frames is not None else None,
        fps=float(fps) if fps is not None else None,
        height=height,
        width=width,
    )


def read_index(data_path: str | Path, data_folder: str | Path | None = None, origin: str = "") -> list[VideoRecord]:
    """Read a data.json (a list of entries), a .jsonl (one entry a line) or a data.txt ("folder,index" lines).

    Video paths are relative to ``data_folder`` (default: the index's folder); a data.txt names
    the folder of each index it lists. ``origin`` says which config key named the index, for its errors.
    """
    data_path = Path(data_path)
    folder = Path(data_folder) if data_folder else data_path.parent
    if not data_path.is_file():
        raise DataError(f"video index {data_path} does not exist" + (f" ({origin})" if origin else ""))
    text = data_path.read_text(encoding="utf-8")
    if data_path.suffix == ".txt":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                sub_folder, sep, sub_index = (part.strip() for part in line.partition(","))
                if not sep:
                    raise DataError(f"{data_path}:{n}: expected 'data_folder,index_path', got {line.strip()!r}")
                records.extend(read_index(sub_index, sub_folder))
        return records
    try:
        if data_path.suffix == ".jsonl":
            entries = [(f"{data_path}:{n}", json.loads(line)) for n, line in enumerate(text.splitlines(), 1)
                       if line.strip()]
        else:
            loaded = json.loads(text)
            if not isinstance(loaded, list):
                raise DataError(f"video index {data_path} must hold a JSON list of entries")
            entries = [(f"{data_path} entry {n}", entry) for n, entry in enumerate(loaded)]
    except json.JSONDecodeError as exc:
        raise DataError(f"video index {data_path} is not valid JSON: {exc}") from None
    return [_record(entry, folder, where) for where, entry in entries]


@dataclass(frozen=True)
class DatasetParam:
    """The ``dataset_param`` block of a data.json (``basic_parameters`` / ``preprocess_parameters`` flattened)."""

    dataset_type: str = "t2v"
    data_path: str = ""
    data_folder: str = ""
    num_frames: int = 81
    max_height: int = 480
    max_width: int = 832
    train_fps: float | None = None
    tokenizer_config: dict | list | None = None
    # MindSpeed-MM's other keys (frame and resize: read by mm_data.clip_options, which names those it cannot honour).
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DataloaderParam:
    """The ``dataloader_param`` block of a data.json."""

    dataloader_mode: str = "sampler"
    sampler_type: str = "SequentialSampler"
    batch_size: int = 1
    num_workers: int = 0
    shuffle: bool = True
    seed: int = 1234
    drop_last: bool = True
    pin_memory: bool = False
    prefetch_factor: int | None = None  # batches each worker loads ahead (torch's default, 2, when null)
    persistent_workers: bool = False
    group_frame: bool = False
    group_resolution: bool = False
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    """A whole data.json: its two blocks and how to treat unreadable samples (``skip`` or ``error``)."""

    dataset_param: DatasetParam = field(default_factory=DatasetParam)
    dataloader_param: DataloaderParam = field(default_factory=DataloaderParam)
    on_bad_sample: str = "skip"


ALIASES = {"json_path": "data_path"}
NESTED_BLOCKS = ("basic_parameters", "preprocess_parameters")
ACCEPTED = {
    DatasetParam: {
        "data_storage_mode", "video_processor_type", "video_reader_type", "image_reader_type", "min_num_frames",
        "frame_interval", "auto_interval", "max_hxw", "min_hxw", "speed_factor", "drop_short_ratio", "cfg",
        "hw_stride", "force_resolution", "hw_aspect_thr", "train_pipeline", "use_text_processer",
        "enable_text_preprocessing", "text_preprocess_methods", "model_max_length", "use_feature_data",
        "use_img_from_vid", "use_img_num", "vid_img_fusion_by_splicing", "skip_frame_num", "skip_define_frame_index",
    },
    DataloaderParam: {
        "group_data", "initial_global_step_for_sampler", "collate_param", "split_batch",
    },
}


def index_origin(config: Config) -> str:
    """Which key of which file named the data section's video index: ``data.dataset_param....json_path in FILE``."""
    block = "data.dataset_param"
    for key in (f"{block}.basic_parameters.data_path", f"{block}.basic_parameters.json_path",
                f"{block}.data_path", f"{block}.json_path"):
        source = config.source_of(key)
        if source is not None and config.get_path(key) is not None:
            return f"{key}, set in {source}"
    return f"{block}.basic_parameters.data_path"


def _unknown_key(key: str, known: Any, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def _check_type(value: Any, hint: Any, where: str) -> Any:
    allowed = tuple(type(None) if arg is None else arg for arg in (get_args(hint) or (hint,)))
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed):
        return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ConfigError(f"{where} must be {names}, got {value!r}")


def _parse_block(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object, got {type(raw).__name__}")
    flat = {}
    for key, value in raw.items():
        if key in NESTED_BLOCKS and cls is DatasetParam:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key} must be an object, got {type(value).__name__}")
            flat.update(value)
        else:
            flat[key] = value
    hints = {name: hint for name, hint in get_type_hints(cls).items() if name != "extra"}
    known, extra = {}, {}
    for key, value in flat.items():
        name = ALIASES.get(key, key)
        if name in hints:
            known[name] = _check_type(value, hints[name], f"{where}.{key}")
        elif key in ACCEPTED[cls]:
            extra[key] = value
        else:
            raise _unknown_key(key, [*hints, *ALIASES, *ACCEPTED[cls]], where)
    return cls(**known, extra=extra)


def parse_data_config(raw: dict, source: str = "data.json") -> DataConfig:
    """Validate a data.json's content into a DataConfig; a wrong key or type is a one-line ConfigError."""
    blocks = {"dataset_param": DatasetParam, "dataloader_param": DataloaderParam}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must hold an object with dataset_param and dataloader_param")
    for key in raw:
        if key not in (*blocks, "on_bad_sample"):
            raise _unknown_key(key, [*blocks, "on_bad_sample"], source)
    on_bad_sample = raw.get("on_bad_sample", "skip")
    if on_bad_sample not in ("skip", "error"):
        raise ConfigError(f"{source}: on_bad_sample must be 'skip' or 'error', got {on_bad_sample!r}")
    return DataConfig(
        **{key: _parse_block(cls, raw.get(key, {}), f"{source}: {key}") for key, cls in blocks.items()},
        on_bad_sample=on_bad_sample,
    )


def load_data_config(path: str | Path) -> DataConfig:
    """Read and validate a data.json file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"data config {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"data config {path} is not valid JSON: {exc}") from None
    return parse_data_config(raw, str(path))
