"""Hugging Face safetensors folders, read tensor by tensor and written in shards of bounded size."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mm_convert.errors import ConvertError
from mm_convert.sources import TensorSource

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
DEFAULT_SHARD_SIZE = "5GB"


def parse_size(text: str | int) -> int:
    """Bytes in ``"5GB"``, ``"500MB"``, ``"2GiB"`` or a plain number."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", str(text), flags=re.I)
    if not found:
        raise ConvertError(f"shard size {text!r} is not a size such as 5GB, 500MB or 2GiB")
    return int(float(found.group(1)) * UNITS[(found.group(2) or "").upper()])


def _weight_files(folder: Path) -> list[Path]:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise ConvertError(f"{folder} holds several safetensors indexes: {', '.join(p.name for p in indexes)}")
    if indexes:
        weight_map = json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"]
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        absent = [p.name for p in files if not p.is_file()]
        if absent:
            raise ConvertError(f"{indexes[0]} names shards that are missing: {', '.join(absent)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise ConvertError(f"{folder} needs one .safetensors file or an index.json (found: {found})")
    return files


def read_safetensors(folder: str | Path) -> TensorSource:
    """The tensors of a safetensors folder (sharded with an index.json, or one file) or of one .safetensors file,
    loaded on access."""
    folder = Path(folder)
    if folder.is_file() and folder.name.endswith(".safetensors"):
        files = [folder]
    elif folder.is_dir():
        files = _weight_files(folder)
    else:
        raise ConvertError(f"{folder} is not a directory")
    metas: dict[str, torch.Tensor] = {}
    file_of: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                part = f.get_slice(key)
                metas[key] = torch.empty(part.get_shape(), dtype=DTYPES[part.get_dtype()], device="meta")
                file_of[key] = path

    def load(key: str) -> torch.Tensor:
        with safe_open(str(file_of[key]), framework="pt") as f:
            return f.get_tensor(key)

    return TensorSource(metas, load, str(folder))


def write_safetensors(
    folder: str | Path, source: TensorSource, weights_name: str = "model", shard_size: str | int = DEFAULT_SHARD_SIZE
) -> list[Path]:
    """Write ``source`` as ``<weights_name>.safetensors`` or shards plus an index, holding one shard in memory."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    limit = parse_size(shard_size)
    written: list[tuple[Path, list[str]]] = []
    current: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        path = folder / f".shard-{len(written):05d}.tmp"
        save_file(current, str(path), metadata={"format": "pt"})
        written.append((path, list(current)))

    total = 0
    for key in source:
        tensor = source[key].contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > limit:
            flush()
            current, size = {}, 0
        current[key] = tensor
        size += nbytes
        total += nbytes
    if current or not written:
        flush()
    if len(written) == 1:
        final = [folder / f"{weights_name}.safetensors"]
        written[0][0].rename(final[0])
        return final
    count = len(written)
    final = [folder / f"{weights_name}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    weight_map = {}
    for (tmp, keys), path in zip(written, final):
        tmp.rename(path)
        weight_map.update(dict.fromkeys(keys, path.name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{weights_name}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return final
