"""MindSpeed-MM's FSDP2 checkpoints: torch.distributed.checkpoint folders, found, read and written as its training
does.

Its training saves ``<save>/iter_XXXXXXX/`` (``.metadata`` and ``__*_*.distcp``) next to
``latest_checkpointed_iteration.txt``; the model's tensors are ``model.<name>`` (``--ckpt-format torch_dcp``) or, in
Megatron's ``torch_dist`` format, ``<name>`` with the layers of a stack stacked along a first dimension
(``decoder.layers.mlp.linear_fc1.weight`` of shape ``(layers, ...)``). ``mm_to_dcp`` writes ``release/`` so, with
``checkpoint_version`` beside the model, as MindSpeed-MM's own ``mm_to_dcp`` does.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from mm_convert.dcp_io import read_dcp
from mm_convert.errors import ConvertError
from mm_convert.megatron_layout import CHECKPOINT_VERSION, ITERATION_FILE, Spill, Stack
from mm_convert.publish import staged_output
from mm_convert.sources import TensorSource

METADATA = ".metadata"
DCP_FILES = ("*.distcp", METADATA)  # an older DCP in the folder written into, replaced as a whole
ITER_DIR = re.compile(r"^iter_(\d+)$")
NOT_MODEL = ("optimizer.", "rng_state")


def find_dcp(path: str | Path) -> Path | None:
    """The DCP folder of ``path``: itself, the folder its ``latest_checkpointed_iteration.txt`` names, else its
    ``release/`` or newest ``iter_*/`` holding a ``.metadata``; None when there is none."""
    path = Path(path)
    if (path / METADATA).is_file():
        return path
    marker = path / ITERATION_FILE
    if marker.is_file():
        text = marker.read_text(encoding="utf-8").strip()
        named = path / ("release" if text == "release" else f"iter_{int(text):07d}" if text.isdigit() else text)
        return named if (named / METADATA).is_file() else None
    found = sorted((int(m.group(1)), p) for p in path.glob("iter_*") if (m := ITER_DIR.match(p.name))
                   and (p / METADATA).is_file())
    if found:
        return found[-1][1]
    return path / "release" if (path / "release" / METADATA).is_file() else None


def read_mindspeed_dcp(path: str | Path, stacks: Sequence[Stack] = ()) -> TensorSource:
    """The model tensors of a MindSpeed-MM FSDP2 checkpoint under their module names, ``stacks``' stacked layers
    (``torch_dist``) as one tensor per layer."""
    folder = find_dcp(path)
    if folder is None:
        raise ConvertError(f"{path} holds no torch.distributed.checkpoint (no {METADATA} in it, in the folder its "
                           f"{ITERATION_FILE} names, in release/ or in iter_*/)")
    source = read_dcp(folder, "model.")
    if not len(source):  # torch_dist: the model's names as they are, beside the optimizer's
        everything = read_dcp(folder, "")
        source = TensorSource({k: everything.meta(k) for k in everything if not k.startswith(NOT_MODEL)},
                              everything.__getitem__, everything.where)
    if not len(source):
        raise ConvertError(f"{folder} holds no tensors")
    return unstack_layers(source, stacks)


def unstack_layers(source: TensorSource, stacks: Sequence[Stack]) -> TensorSource:
    """``source`` with each stacked ``<stack.layers><name>`` tensor of shape ``(layers, ...)`` given as
    ``<stack.layers><i>.<name>``, one per layer (read once for all its layers)."""
    stacked = {key: stack for key in source for stack in stacks
               if key.startswith(stack.layers) and stack.layer_of(key) is None}
    if not stacked:
        return source
    metas: dict[str, torch.Tensor] = {}
    origin: dict[str, tuple[str, int | None]] = {}
    for key in source:
        stack = stacked.get(key)
        if stack is None:
            metas[key], origin[key] = source.meta(key), (key, None)
            continue
        rest = key[len(stack.layers):]
        for i, layer in enumerate(source.meta(key)):
            name = f"{stack.layers}{i}.{rest}"
            metas[name], origin[name] = layer, (key, i)
    last: dict[str, torch.Tensor] = {}

    def load(name: str) -> torch.Tensor:
        key, index = origin[name]
        if index is None:
            return source[key]
        if key not in last:  # the layers of one stacked tensor are read one after another: keep it
            last.clear()
            last[key] = source[key]
        return last[key][index]

    return TensorSource(metas, load, source.where)


def write_mindspeed_dcp(target: str | Path, source: TensorSource) -> Path:
    """Write ``source`` as ``<target>/release/`` (``model.<name>`` and ``checkpoint_version``) and
    ``latest_checkpointed_iteration.txt``; other entries of ``target`` (a ``release/mp_rank_*``) stay. Returns the
    DCP folder."""
    target = Path(target)
    into_existing = target.is_dir()
    with staged_output(target / "release" if into_existing else target, stale=DCP_FILES) as out:
        folder = out if into_existing else out / "release"
        folder.mkdir(exist_ok=True)
        with Spill(out / ".scratch") as spill:  # file-backed copies: one tensor in memory at a time
            state = {"model": {key: spill(source[key]) for key in source}, "checkpoint_version": CHECKPOINT_VERSION}
            with warnings.catch_warnings():  # DCP warns that one process saves alone: intended
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.save(state, checkpoint_id=str(folder), no_dist=True)
        if not into_existing:
            (out / ITERATION_FILE).write_text("release", encoding="utf-8")
    if into_existing:
        (target / ITERATION_FILE).write_text("release", encoding="utf-8")
    return target / "release"
