"""torch.distributed.checkpoint folders, read one tensor at a time."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from mm_convert.errors import ConvertError
from mm_convert.sources import TensorSource


def read_dcp(path: str | Path, prefix: str = "model.") -> TensorSource:
    """The tensors of a DCP folder whose keys start with ``prefix`` (stripped), each loaded on access."""
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise ConvertError(f"{path} holds no torch.distributed.checkpoint (.metadata is missing)")
    metadata = FileSystemReader(str(path)).read_metadata()
    metas = {
        key[len(prefix):]: torch.empty(meta.size, dtype=meta.properties.dtype, device="meta")
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }

    def load(key: str) -> torch.Tensor:
        meta = metas[key]
        state = {prefix + key: torch.empty(meta.shape, dtype=meta.dtype)}
        with warnings.catch_warnings():  # DCP warns that it runs without a process group: intended here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=FileSystemReader(str(path)), no_dist=True)
        return state[prefix + key]

    return TensorSource(metas, load, str(path))
