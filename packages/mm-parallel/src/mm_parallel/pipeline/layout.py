"""Where pipeline stages cut a layer stack, and which stages each pipeline rank runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mm_core.errors import ConfigError

KEY = "parallel.pp.pipeline_num_layers"


def _flat_counts(value: Any, pp: int, virtual: int) -> list[int]:
    """Per-stage counts in stage order from a flat list (one per stage) or MindSpeed's [virtual][pp] rows."""
    stages = pp * virtual
    if isinstance(value, Sequence) and value and all(isinstance(row, Sequence) for row in value):
        if len(value) != virtual or any(len(row) != pp for row in value):
            raise ConfigError(
                f"{KEY} {value!r}: a list of lists needs {virtual} row(s) (virtual_stages) of {pp} (pp.size) counts"
            )
        value = [count for row in value for count in row]  # stage v·pp + r is row v, column r
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != stages:
        raise ConfigError(
            f"{KEY} {value!r} must be a list of {stages} layer counts, one per stage "
            f"(pp.size {pp} × virtual_stages {virtual})"
        )
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in value):
        raise ConfigError(f"{KEY} {value!r} must hold whole numbers of layers (0 or more)")
    return list(value)


def stage_layer_counts(num_layers: int, pp: int, virtual: int, pipeline_num_layers: Any, stack: str) -> list[int]:
    """How many layers of ``stack`` each of the ``pp × virtual`` stages holds, in stage order.

    ``pipeline_num_layers``: None (as even as possible, earlier stages take the remainder), a list with one
    count per stage, or MindSpeed-MM's two-level form ``[[stage 0, ..., stage pp-1], [stage pp, ...], ...]``
    with one row per virtual stage. A mapping names one entry per layer stack (a VLM's vision tower and LLM).
    """
    stages = pp * virtual
    if isinstance(pipeline_num_layers, Mapping):
        if stack not in pipeline_num_layers:
            raise ConfigError(f"{KEY} names stacks {', '.join(map(str, pipeline_num_layers))} but not {stack!r}")
        pipeline_num_layers = pipeline_num_layers[stack]
    if pipeline_num_layers is None:
        if num_layers < stages:
            raise ConfigError(
                f"the model's {stack!r} has {num_layers} layers, fewer than the {stages} pipeline stages; "
                f"lower parallel.pp.size / virtual_stages or set {KEY}"
            )
        base, extra = divmod(num_layers, stages)
        return [base + (stage < extra) for stage in range(stages)]
    counts = _flat_counts(pipeline_num_layers, pp, virtual)
    if sum(counts) != num_layers:
        raise ConfigError(
            f"{KEY} {pipeline_num_layers!r} sums to {sum(counts)} layers, but the model's {stack!r} "
            f"has {num_layers}; the counts must add up to the layer count"
        )
    return counts


def check_first_stage_stack(
    num_layers: int, pp: int, virtual: int, pipeline_num_layers: Any, stack: str, cut_stack: str
) -> None:
    """Check that ``pipeline_num_layers`` keeps ``stack`` whole on the first stage (it runs inside ``pp_pre``).

    A VLM's vision tower runs before its LLM: MindSpeed-MM's usual ``vit_pp_layers`` ``[[32, 0, 0, 0]]`` is
    supported; a cut that puts any of its layers on a later stage is one clear error. No entry (or null) for
    ``stack`` means the same as ``[num_layers, 0, ...]``.
    """
    if not isinstance(pipeline_num_layers, Mapping) or pipeline_num_layers.get(stack) is None:
        return
    value = pipeline_num_layers[stack]
    counts = stage_layer_counts(num_layers, pp, virtual, value, stack)
    later = [stage for stage, count in enumerate(counts) if count and stage > 0]
    if later:
        raise ConfigError(
            f"{KEY}.{stack} {value!r} puts {stack} layers on stage(s) {later}: the {stack!r} "
            f"stack runs whole on the first stage, before {cut_stack!r}; write "
            f"[{num_layers}{', 0' * (pp * virtual - 1)}] (only {cut_stack!r} is cut across stages)"
        )


def stage_ranges(counts: Sequence[int]) -> list[range]:
    """The layer indices of each stage: consecutive runs of ``counts``."""
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return [range(start, start + count) for start, count in zip(starts, counts)]


def local_stages(pp_rank: int, pp: int, virtual: int) -> list[int]:
    """The stages pipeline rank ``pp_rank`` runs: ``pp_rank``, ``pp_rank + pp``, ... (looped placement)."""
    return [pp_rank + v * pp for v in range(virtual)]


def bubble_fraction(pp: int, micro_batches: int, virtual: int = 1) -> float:
    """The idle share of a 1F1B step: (p − 1) / v over (m + (p − 1) / v)."""
    idle = (pp - 1) / virtual
    return idle / (micro_batches + idle)
