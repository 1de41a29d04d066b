"""Outputs are built in a temp folder next to the target and moved into place only once complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path


@contextlib.contextmanager
def staged_output(target: str | Path, stale: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temp folder to write into; on success it becomes ``target``, on failure it is removed.

    An existing ``target`` keeps its other files (MindSpeed-MM writes next to the Hugging Face weights):
    each entry of the output replaces the entry of that name, and files matching the ``stale`` globs
    (an older set of shards) are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not target.exists():
        tmp.rename(target)
        return
    for pattern in stale:
        for old in target.glob(pattern):
            _remove(old)
    for entry in tmp.iterdir():
        _remove(target / entry.name)
        entry.rename(target / entry.name)
    tmp.rmdir()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
