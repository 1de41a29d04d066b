"""MindSpeed-MM / Megatron checkpoints: ``release/`` or ``iter_XXXXXXX/`` with ``mp_rank_TT[_PPP]/model_optim_rng.pt``.

A model has one or more layer stacks (Qwen2.5-VL: the vision blocks and the LLM layers; Wan2.1: the DiT
blocks) that share one pipeline. A layout per stack, such as ``[[2, 2]]`` (one chunk, two stages of two
layers) or ``[[1, 1], [1, 1]]`` (two virtual chunks of two stages), says how many of its layers each
chunk and stage holds; a flat ``[2, 2]`` or a number is read as one chunk. Slots are ordered chunk by
chunk, stage by stage, as in MindSpeed-MM. Layer indices restart at 0 in every slot. The keys that come
before a stack's layers go to the first slot holding any of its layers, those after them to the last.
With virtual chunks a stage file holds ``model0``, ``model1``, ... instead of ``model``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm_convert.errors import ConvertError
from mm_convert.publish import staged_output
from mm_convert.sources import TensorSource, listing

ITERATION_FILE = "latest_checkpointed_iteration.txt"
CKPT_NAME = "model_optim_rng.pt"
RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?$")
CHUNK_KEY = re.compile(r"^model(\d+)$")
CHECKPOINT_VERSION = 3.0
STALE = ("release", "iter_*", ITERATION_FILE)  # an older checkpoint in the target folder, replaced as a whole

Layout = list[list[int]]


def parse_layout(value: Any, option: str) -> Layout:
    """``value`` (a number, a list per stage or a list per chunk of lists per stage) as a list per chunk."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [[value]]
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        value = [value]
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(chunk, list) and chunk and len(chunk) == len(value[0]) for chunk in value)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for chunk in value for n in chunk)
    )
    if not ok:
        raise ConvertError(
            f"{option} must be layers per stage such as 30, [15, 15] or [[8, 7], [7, 8]] "
            f"(one list per virtual chunk, all of the same length), got {value!r}"
        )
    return value


@dataclass(frozen=True)
class Stack:
    """A layer stack: ``<layers><i>.`` keys, and the key prefixes placed before and after its layers."""

    name: str
    layers: str
    firsts: tuple[str, ...] = ()
    lasts: tuple[str, ...] = ()

    def layer_of(self, key: str) -> int | None:
        """The layer index in ``key``, or None when the key is outside the layer stack."""
        if not key.startswith(self.layers):
            return None
        index = key[len(self.layers):].split(".", 1)[0]
        return int(index) if index.isdigit() else None

    def with_layer(self, key: str, index: int) -> str:
        """``key`` with its layer index replaced by ``index``."""
        rest = key[len(self.layers):].split(".", 1)[1]
        return f"{self.layers}{index}.{rest}"


@dataclass(frozen=True)
class PipelineSpec:
    """The stacks of a model, and tied copies: a key written on the last slot only when there are several."""

    stacks: tuple[Stack, ...]
    tied: Mapping[str, str] = field(default_factory=dict)

    def stack_of(self, key: str) -> tuple[Stack, int | None] | None:
        """The stack ``key`` belongs to and its layer index (None for a first or last key), or None."""
        for stack in self.stacks:
            index = stack.layer_of(key)
            if index is not None or key.startswith(stack.firsts + stack.lasts):
                return stack, index
        return None


@dataclass
class MegatronCheckpoint:
    """A read checkpoint: its layout per stack and, per tensor-parallel rank, the tensors with global indices."""

    path: Path
    layouts: dict[str, Layout]
    sources: list[TensorSource]


def _stage_dir(root: Path) -> Path:
    marker = root / ITERATION_FILE
    if marker.is_file():
        text = marker.read_text(encoding="utf-8").strip()
        name = "release" if text == "release" else f"iter_{int(text):07d}" if text.isdigit() else None
        if name is None:
            raise ConvertError(f"{marker} must hold 'release' or an iteration number, got {text!r}")
        return root / name
    found = [p for p in root.iterdir() if p.is_dir() and (p.name == "release" or p.name.startswith("iter_"))]
    if len(found) != 1:
        raise ConvertError(
            f"{root} is not a MindSpeed-MM checkpoint: no {ITERATION_FILE} and no single release/ or iter_*/"
        )
    return found[0]


def _chunks(state: dict, path: Path) -> list[dict]:
    if "model" in state:
        return [state["model"]]
    numbered = sorted((int(m.group(1)), v) for k, v in state.items() if (m := CHUNK_KEY.match(k)))
    if not numbered:
        raise ConvertError(f"{path} holds neither 'model' nor 'model0', 'model1', ...")
    return [v for _, v in numbered]


def read_megatron(path: str | Path, spec: PipelineSpec,
                  given: Mapping[str, Layout] | None = None) -> MegatronCheckpoint:
    """Open every stage file (memory-mapped) and put each stack's layers back in one global numbering; ``given``
    layouts give the stacks' layers per slot where the files lack some (a LoRA of some layers)."""
    root = Path(path)
    if not root.is_dir():
        raise ConvertError(f"{root} is not a directory")
    stage_dir = _stage_dir(root)
    ranks = {}
    for sub in stage_dir.iterdir() if stage_dir.is_dir() else []:
        found = RANK_DIR.match(sub.name)
        if found and (sub / CKPT_NAME).is_file():
            ranks[(int(found.group(1)), int(found.group(2) or 0))] = sub / CKPT_NAME
    if not ranks:
        raise ConvertError(f"{stage_dir} holds no mp_rank_*/{CKPT_NAME}")
    tp_size = max(t for t, _ in ranks) + 1
    pp_size = max(p for _, p in ranks) + 1
    absent = [f"tp {t} pp {p}" for t in range(tp_size) for p in range(pp_size) if (t, p) not in ranks]
    if absent:
        raise ConvertError(f"{stage_dir} lacks the stage files of {', '.join(absent)}")
    sources, layouts = [], []
    for tp in range(tp_size):
        stages = [
            _chunks(torch.load(ranks[(tp, pp)], map_location="cpu", mmap=True, weights_only=False), ranks[(tp, pp)])
            for pp in range(pp_size)
        ]
        if len({len(chunks) for chunks in stages}) != 1:
            raise ConvertError(f"{stage_dir}: the stages of tp rank {tp} hold different numbers of virtual chunks")
        slots = [chunks[c] for c in range(len(stages[0])) for chunks in stages]
        source, counts = _merge(slots, spec, f"{stage_dir} (tp rank {tp})", given or {})
        sources.append(source)
        layouts.append({name: [n[c * pp_size:(c + 1) * pp_size] for c in range(len(stages[0]))]
                        for name, n in counts.items()})
    if any(layout != layouts[0] for layout in layouts):
        raise ConvertError(f"{stage_dir}: tensor-parallel ranks disagree on the layers per stage: {layouts}")
    return MegatronCheckpoint(root, layouts[0], sources)


def _merge(slots: list[dict], spec: PipelineSpec, where: str,
           layouts: Mapping[str, Layout]) -> tuple[TensorSource, dict[str, list[int]]]:
    given = {name: sum(layout, []) for name, layout in layouts.items()}
    for name, flat in given.items():
        if len(flat) != len(slots):
            raise ConvertError(f"{where} has {len(slots)} pipeline slots (stages x chunks), the {name} layout "
                               f"{layouts[name]} has {len(flat)}")
    tensors: dict[str, torch.Tensor] = {}
    counts = {stack.name: [0] * len(slots) for stack in spec.stacks}
    starts = dict.fromkeys(counts, 0)
    unknown = []
    for slot, state in enumerate(slots):
        for stack in spec.stacks:
            local = sorted({i for k in state if (i := stack.layer_of(k)) is not None})
            if stack.name in given:
                if local and local[-1] >= given[stack.name][slot]:
                    raise ConvertError(f"{where}: slot {slot} holds {stack.name} layer {local[-1]}, beyond the "
                                       f"{given[stack.name][slot]} layers its layout gives it")
                counts[stack.name][slot] = given[stack.name][slot]
                continue
            if local != list(range(len(local))) and len(slots) > 1:  # one slot: its indices are the global ones
                raise ConvertError(f"{where}: slot {slot} holds {stack.name} layers {local}, not 0..{len(local) - 1}")
            counts[stack.name][slot] = len(local)
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                continue  # Megatron's _extra_state entries
            found = spec.stack_of(key)
            if found is None:
                unknown.append(key)
                continue
            stack, index = found
            name = key if index is None else stack.with_layer(key, starts[stack.name] + index)
            if name in tensors and name not in spec.tied:
                raise ConvertError(f"{where}: {name} appears in more than one stage")
            tensors[name] = value
        for stack in spec.stacks:
            starts[stack.name] += counts[stack.name][slot]
    if unknown:
        raise ConvertError(f"{where}: {len(unknown)} keys belong to no layer stack: {listing(sorted(unknown))}")
    for copy, original in spec.tied.items():
        if original in tensors:
            tensors.pop(copy, None)
    metas = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in tensors.items()}
    return TensorSource(metas, tensors.__getitem__, where), counts


def _plan(source: TensorSource, layouts: dict[str, Layout], spec: PipelineSpec, sparse: bool = False,
          ends: Mapping[str, tuple[int, int]] | None = None) -> list[dict[str, str]]:
    """For each slot (chunk-major), its keys: local name -> global name; ``sparse``: layers may be absent."""
    shapes = {(len(layout), len(layout[0])) for layout in layouts.values()}
    if sorted(layouts) != sorted(stack.name for stack in spec.stacks) or len(shapes) != 1:
        raise ConvertError(f"the layouts {layouts} must have the same number of chunks and stages")
    slots = len(sum(next(iter(layouts.values())), []))
    plan: list[dict[str, str]] = [{} for _ in range(slots)]
    bounds = {}
    problems = []
    for stack in spec.stacks:
        flat = sum(layouts[stack.name], [])
        layers = sorted({i for k in source if (i := stack.layer_of(k)) is not None})
        misfit = layers[-1] >= sum(flat) if sparse and layers else layers != list(range(sum(flat)))
        if misfit:
            have = f"{len(layers)} (indices {layers[0]} to {layers[-1]})" if layers else "0"
            problems.append(f"the {stack.name} layout {layouts[stack.name]} holds {sum(flat)} layers "
                            f"but {source.where} has {have}")
        used = [s for s, n in enumerate(flat) if n] or [0]
        starts = np.cumsum([0, *flat]).tolist()
        bounds[stack.name] = (*(ends or {}).get(stack.name, (used[0], used[-1])), starts)
    if problems:
        raise ConvertError("; ".join(problems))
    unplaced = []
    for key in source:
        found = spec.stack_of(key)
        if found is None:
            unplaced.append(key)
            continue
        stack, index = found
        first, last, starts = bounds[stack.name]
        if index is None:
            plan[first if key.startswith(stack.firsts) else last][key] = key
            continue
        slot = next(s for s in range(slots) if starts[s] <= index < starts[s + 1])
        plan[slot][stack.with_layer(key, index - starts[slot])] = key
    if unplaced:
        raise ConvertError(
            f"{source.where}: {len(unplaced)} keys belong to no layer stack: {listing(sorted(unplaced))}"
        )
    if slots > 1:
        for copy, original in spec.tied.items():
            stack, _ = spec.stack_of(copy)
            if original in source and copy not in source:
                plan[bounds[stack.name][1]][copy] = original
    return plan


def write_megatron(path: str | Path, sources: list[TensorSource], layouts: dict[str, Layout],
                   spec: PipelineSpec, sparse: bool = False,
                   ends: Mapping[str, tuple[int, int]] | None = None) -> None:
    """Write a ``release/`` checkpoint cut by ``layouts``, holding one tensor in memory at a time.

    Each stage file is one pickle, so its tensors are first copied one by one into a scratch file
    (memory-mapped, so they live in the page cache) and ``torch.save`` streams them from there. ``sparse``: the
    stacks may lack layers (a LoRA of some of them); each layer index need only fall inside the layout. ``ends``: a
    stack's (first, last) slots for the keys before and after its layers, instead of the first and last slots
    holding its layers (MindSpeed-MM's U-shaped layerwise_disaggregated_training layout).
    """
    root = Path(path)
    layout = next(iter(layouts.values()))
    pp_size, vpp_size = len(layout[0]), len(layout)
    plans = [_plan(source, layouts, spec, sparse, ends) for source in sources]
    scratch = root / ".scratch"
    for tp, (source, plan) in enumerate(zip(sources, plans)):
        for pp in range(pp_size):
            name = f"mp_rank_{tp:02d}" if pp_size == 1 else f"mp_rank_{tp:02d}_{pp:03d}"
            with Spill(scratch) as spill:
                chunks = [{local: spill(source[key]) for local, key in plan[c * pp_size + pp].items()}
                          for c in range(vpp_size)]
                state: dict[str, Any] = {"checkpoint_version": CHECKPOINT_VERSION}
                if vpp_size == 1:
                    state["model"] = chunks[0]
                else:
                    state.update({f"model{c}": chunk for c, chunk in enumerate(chunks)})
                (root / "release" / name).mkdir(parents=True)
                torch.save(state, root / "release" / name / CKPT_NAME)
    (root / ITERATION_FILE).write_text("release", encoding="utf-8")


class Spill:
    """Copies tensors into files under ``folder`` and returns file-backed tensors; removes the files on exit."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def __enter__(self) -> Spill:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().contiguous()
        if tensor.numel() == 0:
            return tensor.clone()
        path = self.folder / f"{self.count:06d}.bin"
        self.count += 1
        raw = np.memmap(path, dtype=np.uint8, mode="w+", shape=(tensor.numel() * tensor.element_size(),))
        backed = torch.from_numpy(raw).view(tensor.dtype).view(tensor.shape)
        backed.copy_(tensor)
        return backed

    def __exit__(self, *exc: object) -> None:
        for path in self.folder.iterdir():
            path.unlink()
        self.folder.rmdir()


def resplit_megatron(source: str | Path, target: str | Path, layouts: dict[str, Layout],
                     spec: PipelineSpec) -> dict[str, Layout]:
    """Re-cut a checkpoint into ``layouts`` (tensor parallelism kept); returns the layouts it had."""
    checkpoint = read_megatron(source, spec)
    with staged_output(target, stale=STALE) as out:
        write_megatron(out, checkpoint.sources, layouts, spec)
    return checkpoint.layouts
