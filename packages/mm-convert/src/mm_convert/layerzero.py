"""MindSpeed's LayerZero (ZeRO-3) checkpoints, as MindSpeed-MM's ``--layerzero`` training saves them.

``<save>/iter_XXXXXXX/model_<global rank>.pt``, one file per rank, each a dict with ``model`` (``ema_model``): every
parameter managed by ZeRO-3 as this rank's flat 1-D piece, the others whole; ``shard_state_dict``: per parameter
(its name without the ``_zero3_wrapped_module.`` / ``_checkpoint_wrapped_module.`` wrappers) a ``ShardFlattenInfo``
with its ``shape``; ``parallel_state``: ``global_rank``, ``tp_degree``, ``pp_degree`` ... A parameter is its pieces
joined in global-rank order. Files load with ``weights_only``: MindSpeed's own classes (``ShardFlattenInfo``, enums
in ``args``) come back as plain stand-ins holding their fields, never as code.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

import torch

from mm_convert.errors import ConvertError
from mm_convert.sources import TensorSource, listing

SHARD_FILE = re.compile(r"^model_(\d+)\.pt$")
ITER_DIR = re.compile(r"^iter_(\d+)$")
WRAPPERS = ("_zero3_wrapped_module.", "_checkpoint_wrapped_module.")
UNKNOWN_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_STAND_INS: dict[str, Any] = {"argparse.Namespace": argparse.Namespace}


class StandIn:
    """An object of a class mm does not import (MindSpeed's): its constructor arguments and fields, nothing run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)


def load_weights_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``, each class it does not allow read as a :class:`StandIn`."""
    for _ in range(64):
        try:
            with torch.serialization.safe_globals([(cls, name) for name, cls in _STAND_INS.items()]):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch names the class it refused; anything else is not ours to fix
            found = UNKNOWN_GLOBAL.search(str(exc))
            if found is None or found.group(1) in _STAND_INS:
                raise ConvertError(f"{path} cannot be read as a LayerZero shard: {exc}") from None
            _STAND_INS[found.group(1)] = type(found.group(1).rsplit(".", 1)[-1], (StandIn,), {})
    raise ConvertError(f"{path} names too many classes to stand in for")


def iteration_dir(root: Path, iteration: int | None) -> Path:
    """The ``iter_XXXXXXX`` folder of ``iteration`` under ``root``, else the newest; ``root`` itself when it holds
    the shard files."""
    if iteration is not None:
        folder = root / f"iter_{iteration:07d}"
        if not folder.is_dir():
            raise ConvertError(f"{root} has no {folder.name}/ (--iteration {iteration})")
        return folder
    if any(SHARD_FILE.match(p.name) for p in root.iterdir()):
        return root
    found = sorted((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := ITER_DIR.match(p.name)))
    if not found:
        raise ConvertError(f"{root} is not a LayerZero checkpoint: no iter_XXXXXXX/ and no model_<rank>.pt")
    return found[-1][1]


def _clean(key: str) -> str:
    for wrapper in WRAPPERS:
        key = key.replace(wrapper, "")
    return key


def read_layerzero(path: str | Path, iteration: int | None = None, prefix: str = "predictor",
                   ema_model: bool = False) -> TensorSource:
    """The whole tensors of a LayerZero checkpoint (TP 1, PP 1), ``prefix.`` taken off their names."""
    root = Path(path)
    if not root.is_dir():
        raise ConvertError(f"{root} is not a directory")
    folder = iteration_dir(root, iteration)
    files = sorted((int(m.group(1)), p) for p in folder.rglob("model_*.pt") if (m := SHARD_FILE.match(p.name)))
    if not files:
        raise ConvertError(f"{folder} holds no LayerZero shards (model_<rank>.pt)")
    model_key = "ema_model" if ema_model else "model"
    shards = []
    for _, file in files:
        state = load_weights_only(file)
        missing = [k for k in ("parallel_state", "shard_state_dict", model_key) if k not in state]
        if missing:
            raise ConvertError(f"{file} is not a LayerZero shard: it lacks {', '.join(missing)}")
        shards.append(state)
    shards.sort(key=lambda s: s["parallel_state"]["global_rank"])
    parallel = shards[0]["parallel_state"]
    if parallel["tp_degree"] != 1 or parallel["pp_degree"] != 1:
        raise ConvertError(f"{folder} was saved with TP {parallel['tp_degree']} and PP {parallel['pp_degree']}; "
                           "LayerZero checkpoints convert from TP 1 and PP 1 (as MindSpeed-MM's layerzero_to_mm)")
    models = [s[model_key] for s in shards]
    odd = sorted({k for m in models[1:] for k in set(m) ^ set(models[0])})
    if odd:
        raise ConvertError(f"{folder}: the ranks' shards hold different parameters: {listing(odd)}")
    infos = shards[0]["shard_state_dict"]
    strip = f"{prefix}." if prefix else ""
    names = {(c[len(strip):] if strip and c.startswith(strip) else c): key
             for key in models[0] if isinstance(models[0][key], torch.Tensor) for c in (_clean(key),)}

    def shape(key: str) -> torch.Size:
        info = infos.get(_clean(key))
        return models[0][key].shape if info is None else torch.Size(info.shape)

    def load(name: str) -> torch.Tensor:
        key = names[name]
        if infos.get(_clean(key)) is None:
            return models[0][key]
        flat = torch.cat([m[key].reshape(-1) for m in models])
        size = math.prod(shape(key))
        if flat.numel() < size:
            raise ConvertError(f"{folder}: the pieces of {_clean(key)} hold {flat.numel()} values, its shape "
                               f"{tuple(shape(key))} needs {size}")
        return flat[:size].reshape(shape(key)).clone()

    metas = {name: torch.empty(shape(key), dtype=models[0][key].dtype, device="meta") for name, key in names.items()}
    return TensorSource(metas, load, str(folder))
