"""The context-parallel groups a model's attention runs on, how a sequence is laid out over them, and the scope
one forward's split, attention calls and gather share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.distributed as dist
from torch.autograd import Variable
from torch.distributed import ProcessGroup
from torch.distributed.device_mesh import DeviceMesh
from torch.utils._pytree import tree_map_only

from mm_core.errors import ConfigError, PluginError

MODES = ("ulysses", "ring", "usp")


@dataclass(frozen=True)
class SequenceLayout:
    """Where each token of a ``length``-token sequence lives on ``ring`` × ``ulysses`` ranks.

    The sequence is padded to ``padded`` tokens and cut into ``chunks`` equal chunks. With a ring, ring rank i holds
    chunks i and 2·ring−1−i ("zigzag"), so that every rank does the same causal work; each ring shard is then split
    contiguously over its ``ulysses`` ranks. Context-parallel rank c is ring rank c // ulysses, ulysses rank
    c % ulysses.
    """

    length: int
    ring: int = 1
    ulysses: int = 1

    @property
    def chunks(self) -> int:
        """Number of equal chunks the padded sequence is cut into."""
        return 2 * self.ring if self.ring > 1 else 1

    @property
    def padded(self) -> int:
        """The length rounded up so every rank gets the same number of tokens."""
        multiple = self.chunks * self.ulysses
        return -(-self.length // multiple) * multiple

    @property
    def chunk_len(self) -> int:
        """Tokens per chunk."""
        return self.padded // self.chunks

    def ring_positions(self, ring_rank: int) -> torch.Tensor:
        """Sequence positions of ring rank ``ring_rank``'s tokens, in the order it holds them."""
        ids = (ring_rank, self.chunks - 1 - ring_rank) if self.ring > 1 else (0,)
        return torch.cat([torch.arange(i * self.chunk_len, (i + 1) * self.chunk_len) for i in ids])

    def positions(self, cp_rank: int) -> torch.Tensor:
        """Sequence positions (padding included) of context-parallel rank ``cp_rank``'s shard, in order."""
        ring_rank, ulysses_rank = divmod(cp_rank, self.ulysses)
        return self.ring_positions(ring_rank).chunk(self.ulysses)[ulysses_rank]

    @cached_property
    def order(self) -> torch.Tensor:
        """The positions of all shards concatenated in rank order: a permutation of ``range(padded)``."""
        return torch.cat([self.positions(rank) for rank in range(self.ring * self.ulysses)])


@dataclass(frozen=True)
class ContextParallel:
    """The process groups and mode of context parallelism, built once per run (:func:`build_context`)."""

    mode: str
    group: ProcessGroup
    ulysses_group: ProcessGroup | None = None
    ring_group: ProcessGroup | None = None
    ring_window: tuple[ProcessGroup, ProcessGroup] | None = None

    @property
    def size(self) -> int:
        """Ranks in the context-parallel group."""
        return dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        """This rank's index in the context-parallel group."""
        return dist.get_rank(self.group)

    @property
    def ulysses_size(self) -> int:
        """Ranks that exchange attention heads (1 without Ulysses)."""
        return 1 if self.ulysses_group is None else dist.get_world_size(self.ulysses_group)

    @property
    def ring_size(self) -> int:
        """Ranks that pass key/value blocks around (1 without a ring)."""
        return 1 if self.ring_group is None else dist.get_world_size(self.ring_group)

    def layout(self, length: int) -> SequenceLayout:
        """The layout of a ``length``-token sequence over these groups."""
        return SequenceLayout(length, ring=self.ring_size, ulysses=self.ulysses_size)


def _double_ring(ring_mesh: DeviceMesh, window_size: int | None) -> tuple[ProcessGroup, ProcessGroup] | None:
    """The (inner, outer) groups of a double ring with windows of ``window_size`` ranks; None for one ring."""
    size = ring_mesh.size()
    if window_size is None or window_size == size:
        return None
    if window_size < 1 or size % window_size:
        raise ConfigError(f"parallel.cp.window_size {window_size} must divide the ring's {size} ranks")
    grid = ring_mesh._unflatten(0, (size // window_size, window_size), ("cp_ring_outer", "cp_ring_inner"))
    return grid.get_group("cp_ring_inner"), grid.get_group("cp_ring_outer")


def build_context(
    mesh_or_group: DeviceMesh | ProcessGroup,
    mode: str = "ulysses",
    ulysses_degree: int | None = None,
    window_size: int | None = None,
) -> ContextParallel:
    """Context parallelism of ``mode`` over a 1-D cp DeviceMesh or group (usp: a mesh and ``ulysses_degree``).

    ``window_size``: ring and usp pass key/value blocks over a double ring with windows of that many ring ranks
    (a mesh is needed); None: one ring.
    """
    if mode not in MODES:
        raise ConfigError(f"parallel.cp.mode {mode!r} is not one of {', '.join(MODES)}")
    is_mesh = isinstance(mesh_or_group, DeviceMesh)
    group = mesh_or_group.get_group() if is_mesh else mesh_or_group
    if window_size is not None and (mode == "ulysses" or not is_mesh):
        raise ConfigError(
            f"parallel.cp.window_size {window_size} needs cp mode ring or usp over a DeviceMesh, got mode {mode!r}"
        )
    if mode == "ulysses":
        return ContextParallel(mode, group, ulysses_group=group)
    if mode == "ring":
        return ContextParallel(mode, group, ring_group=group, ring_window=_double_ring(mesh_or_group, window_size)
                               if is_mesh else None)
    size = dist.get_world_size(group)
    if not is_mesh or ulysses_degree is None or ulysses_degree < 1 or size % ulysses_degree:
        raise ConfigError(
            f"cp mode usp needs the cp DeviceMesh and a ulysses degree dividing the cp size {size}, "
            f"got ulysses degree {ulysses_degree}"
        )
    # Ulysses is the inner dim: its all-to-alls then stay between neighbouring ranks (one node).
    grid = mesh_or_group._unflatten(0, (size // ulysses_degree, ulysses_degree), ("cp_ring", "cp_ulysses"))
    return ContextParallel(
        mode,
        group,
        ulysses_group=grid.get_group("cp_ulysses"),
        ring_group=grid.get_group("cp_ring"),
        ring_window=_double_ring(grid["cp_ring"], window_size),
    )


@dataclass(frozen=True)
class Scope:
    """What the split, attention calls and gather of one forward share: the groups, and the length of the sequence
    split over them (None until the split)."""

    cp: ContextParallel
    length: int | None = None


# The scope of the forward running now, or of the backward pass re-entering it; None outside both. Only
# `context_parallel` (a forward) and `reenter_in_backward` (its backward) set it, and both put back what was there.
_active: Scope | None = None
# While a backward pass re-enters a scope: what to put back when that pass ends.
_before_backward: list[Scope | None] = []


def active_scope() -> Scope | None:
    """The scope ``attention`` and the sequence helpers run in when given no groups."""
    return _active


@contextmanager
def context_parallel(cp: ContextParallel | None, length: int | None = None) -> Iterator[None]:
    """Within the block, ``attention`` and the sequence helpers run on ``cp``, sharing the length a split records.

    ``length``: the true length of a sequence already split (on another pipeline stage). The scope ends with the
    block: run backward inside it too when modules are recomputed (the engine re-enters it in backward itself).
    """
    global _active
    previous, _active = _active, None if cp is None else Scope(cp, length)
    try:
        yield
    finally:
        _active = previous


def record_split(cp: ContextParallel, length: int) -> None:
    """Note in the active scope that a ``length``-token sequence was split over ``cp`` (nothing outside one)."""
    global _active
    if _active is None or _active.cp != cp:
        return
    if _active.length not in (None, length):
        raise PluginError(
            f"context parallelism splits one sequence length per forward: {_active.length} tokens were split "
            f"already, now {length}"
        )
    _active = Scope(cp, length)


def true_length(cp: ContextParallel, length: int | None, shard: int) -> int:
    """A sequence's true length over ``cp``: ``length``, else the active scope's split, else ``shard`` × ranks."""
    if length is not None:
        return length
    if _active is not None and _active.cp == cp and _active.length is not None:
        return _active.length
    return shard * cp.size


def _end_backward() -> None:
    global _active
    _active = _before_backward.pop()


class _Reenter(torch.autograd.Function):
    """Identity; its backward makes ``scope`` active until the backward pass ends (recompute runs forwards there)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scope: Scope) -> torch.Tensor:
        ctx.scope = scope
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        global _active
        if not _before_backward:
            _before_backward.append(_active)
            Variable._execution_engine.queue_callback(_end_backward)
        _active = ctx.scope
        return grad, None


def reenter_in_backward(output: Any, scope: Scope | None) -> Any:
    """``output`` with each tensor that requires grad passed through an identity that re-enters ``scope`` in backward.

    Applied to what leaves a scope (the model's output, a pipeline stage's carry), it keeps the scope active while
    backward runs through what ran in it, activation checkpointing's recompute included.
    """
    if scope is None:
        return output
    return tree_map_only(torch.Tensor, lambda t: _Reenter.apply(t, scope) if t.requires_grad else t, output)
