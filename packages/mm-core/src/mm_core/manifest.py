"""A checkpoint's manifest: the size and checksum of every file it holds, written last, checked on resume.

Each rank sums the files it wrote itself and rank 0 writes ``manifest.json`` from them all, so no rank reads
the whole checkpoint; on resume the ranks share the files to check the same way.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch.distributed as dist

MANIFEST = "manifest.json"
CHUNK = 16 << 20


def crc32(path: Path) -> str:
    """The CRC-32 of a file's bytes, as 8 hex digits."""
    value = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            value = zlib.crc32(block, value)
    return f"{value:08x}"


def own_files(directory: Path, rank: int, rank_zero_files: tuple[str, ...]) -> list[Path]:
    """The files of a checkpoint directory that ``rank`` wrote: its DCP shards and rank file (and rank 0's own)."""
    mine = [p for p in directory.iterdir() if p.name.startswith(f"__{rank}_") or p.name == f"rank_{rank:05d}.pt"]
    if rank == 0:
        mine += [directory / name for name in rank_zero_files if (directory / name).is_file()]
    return sorted(mine)


def _gather(value: object) -> list:
    """``value`` of every rank (just this one's without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def write(directory: Path, rank: int, rank_zero_files: tuple[str, ...]) -> None:
    """Record every rank's files of ``directory`` in its manifest (collective; rank 0 writes)."""
    entries = {p.name: {"bytes": p.stat().st_size, "crc32": crc32(p)} for p in own_files(directory, rank,
                                                                                          rank_zero_files)}
    gathered = _gather(entries)
    if rank == 0:
        files = {name: entry for part in gathered for name, entry in part.items()}
        (directory / MANIFEST).write_text(json.dumps({"files": dict(sorted(files.items()))}, indent=1))


def damage(directory: Path, rank: int = 0, world_size: int = 1) -> str | None:
    """What is wrong with ``directory`` against its manifest, naming the file; None when intact (collective).

    A checkpoint without a manifest (written before mm kept one) is taken as it is.
    """
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError) as exc:
        return f"its {MANIFEST} is unreadable ({exc})"
    problems = []
    for index, (name, entry) in enumerate(sorted(files.items())):
        file = directory / name
        if not file.is_file():
            problems.append(f"{file} is missing")
        elif file.stat().st_size != entry["bytes"]:
            problems.append(f"{file} has {file.stat().st_size} bytes, {entry['bytes']} were written")
        elif index % world_size == rank and crc32(file) != entry["crc32"]:
            problems.append(f"{file} does not have the checksum it was written with")
    found = sorted({p for part in _gather(problems) for p in part})
    return found[0] if found else None
