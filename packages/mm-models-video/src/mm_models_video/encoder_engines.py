"""The encoder engines of online training, for every video family: encoder data parallelism
(``model.enable_encoder_dp``) and interleaved encoder offload (``model.encoder_offload_interval: N``).

Both turn raw batches into features in ``get_batch``, ahead of the steps that train on them:
- encoder-DP: the ranks that train on the same batch (a CP / TP group) encode different ones. The group's rank 0
  reads ``size`` batches, rank i encodes the i-th, the features are all-gathered and the group trains on them one
  after another: the same batches in the same order, each encoded once instead of ``size`` times;
- offload: the offloaded encoders (the text encoders) live on the CPU and come to the device once a window, to
  encode ``N`` batches at once; the steps between train from that cache.
Together, each rank of the group encodes ``N`` batches a window and the group trains ``size × N`` steps on them.
With the data iterator's :meth:`~mm_core.data_iter.DataIterator.served` a checkpoint taken inside a window
records the position after the batch trained on, so a resumed run encodes the rest again and trains on the same features
as a straight run, whatever ``save_interval`` is.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import ProcessGroup

from mm_core.data_iter import DataIterator
from mm_core.errors import ConfigError
from mm_core.runtime import Runtime
from mm_models_video.cp_batch import read_seeded_batch, seeded_batch
from mm_models_video.encoder_dp import gather_batches, scatter_batches
from mm_models_video.vae_cp import check_vae_cp

log = logging.getLogger(__name__)

Batch = dict[str, Any]


def _pack(batches: list[Batch]) -> Batch:
    return {f"{i}/{key}": value for i, batch in enumerate(batches) for key, value in batch.items()}


def _unpack(packed: Batch, count: int) -> list[Batch]:
    batches: list[Batch] = [{} for _ in range(count)]
    for name, value in packed.items():
        index, key = name.split("/", 1)
        batches[int(index)][key] = value
    return batches


@contextlib.contextmanager
def on_device(modules: Sequence[nn.Module], device: torch.device) -> Iterator[None]:
    """``modules`` on ``device`` inside the block, on the CPU after it."""
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            module.to("cpu")


class EncodedBatches:
    """Serves the features of raw batches, encoded ``interval`` at a time by each rank of ``group`` (None: this
    rank alone) with the ``offload`` modules on ``device`` while encoding and on the CPU between.

    Call :meth:`next` on every rank of the group each step with ``read`` (the next raw batch; only the group's rank
    0 calls it). ``encode`` turns a raw batch on ``device`` into the batch the forward takes. With ``ahead`` (the
    data iterator ``read`` draws from) a checkpoint records the position after the batch trained on.
    ``encode_calls`` counts this rank's encoded batches, ``windows`` the times the offloaded modules came to the
    device.
    """

    def __init__(self, encode: Callable[[Batch], Batch], device: torch.device, group: ProcessGroup | None = None,
                 interval: int = 1, offload: Sequence[nn.Module] = (), ahead: DataIterator | None = None) -> None:
        check_interval(interval)
        self.encode, self.device, self.group, self.interval, self.ahead = encode, torch.device(device), group, \
            interval, ahead
        self.offload = list(offload)
        self.size = dist.get_world_size(group) if group is not None else 1
        self.rank = dist.get_rank(group) if group is not None else 0
        self.pending: deque[tuple[Batch, dict | None]] = deque()
        self.encode_calls = self.windows = 0
        for module in self.offload:
            module.to("cpu")

    def _read(self, read: Callable[[], Batch], count: int) -> tuple[list[Batch], list[dict | None]]:
        batches, positions = [], []
        for _ in range(count):
            batches.append(read())
            positions.append(self.ahead.snapshot() if self.ahead is not None else None)
        return batches, positions

    def _window(self, read: Callable[[], Batch]) -> None:
        count = self.size * self.interval
        raws, positions = self._read(read, count) if self.rank == 0 else ([], [None] * count)
        if self.group is None:
            own = raws
        else:
            shares = [_pack(raws[r * self.interval:(r + 1) * self.interval]) for r in range(self.size)] \
                if self.rank == 0 else None
            own = _unpack(scatter_batches(shares, self.group, self.device), self.interval)
        with on_device(self.offload, self.device) if self.offload else contextlib.nullcontext():
            encoded = [self.encode(batch) for batch in own]
        self.encode_calls += len(encoded)
        self.windows += 1
        if self.group is not None:
            encoded = [b for packed in gather_batches(_pack(encoded), self.group) for b in _unpack(packed,
                                                                                                 self.interval)]
        self.pending.extend(zip(encoded, positions))

    def next(self, read: Callable[[], Batch]) -> Batch:
        """The features of the next step's batch."""
        if not self.pending:
            self._window(read)
        features, position = self.pending.popleft()
        if position is not None:
            self.ahead.served(position)
        return features


@dataclass(frozen=True)
class FeatureEncoder:
    """What a family gives the encoder engines: ``encode`` (raw batch on the device -> the batch its forward
    takes, with features in place of the clip and caption) and the modules offloading moves (its text encoders)."""

    encode: Callable[[Batch], Batch]
    offload: Sequence[nn.Module] = ()


def engine_settings(model: Any) -> tuple[bool, int]:
    """``(model.enable_encoder_dp, model.encoder_offload_interval)`` of a model section."""
    interval = model.get("encoder_offload_interval", 1)
    return bool(model.get("enable_encoder_dp", False)), 1 if interval is None else interval


def engines_on(model: Any) -> bool:
    """Whether the model section turns on encoder-DP or offload (the encoders then run in ``get_batch``)."""
    encoder_dp, interval = engine_settings(model)
    return encoder_dp or interval != 1


def fsdp_ignored(model: Any, frozen: Sequence[str]) -> tuple[str, ...]:
    """``frozen`` when the engines are on (FSDP2 must leave the encoders whole: they run outside the forward)."""
    return tuple(frozen) if engines_on(model) else ()


def _unwrapped(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def engine_batch(data_iterator: DataIterator, runtime: Runtime, model: nn.Module,
                 features: Callable[[nn.Module], FeatureEncoder]) -> Batch:
    """A video family's ``get_batch``: :func:`~mm_models_video.cp_batch.read_seeded_batch`, or with the encoder
    engines on, the next batch of features they serve (``features(model)`` says how the model encodes)."""
    config = runtime.config
    if not engines_on(config.model):
        return read_seeded_batch(data_iterator, runtime)
    engine = getattr(data_iterator, "_encoder_engine", None)
    if engine is None:
        engine = data_iterator._encoder_engine = _engine(data_iterator, runtime, features(_unwrapped(model)))
    if engine.group is None:
        return engine.next(lambda: read_seeded_batch(data_iterator, runtime))
    return engine.next(lambda: seeded_batch(data_iterator, config.training.seed))


def _engine(data_iterator: DataIterator, runtime: Runtime, encoder: FeatureEncoder) -> EncodedBatches:
    encoder_dp, interval = engine_settings(runtime.config.model)
    group = None
    if encoder_dp and runtime.dims["cp"] * runtime.dims["tp"] > 1:
        group = runtime.submesh("cp_tp").get_group()
    elif encoder_dp and runtime.is_main:
        log.info("model.enable_encoder_dp: no context- or tensor-parallel group, every rank encodes its own batches")
    autocast = (lambda: torch.autocast(runtime.device.type, dtype=torch.bfloat16)) if runtime.config.training.bf16 \
        else contextlib.nullcontext

    @torch.no_grad()
    def encode(batch: Batch) -> Batch:
        with autocast():
            return encoder.encode(batch)

    return EncodedBatches(encode, runtime.device, group, interval, encoder.offload, data_iterator)


def check_interval(interval: Any) -> None:
    """A ConfigError unless ``model.encoder_offload_interval`` is a whole number of steps >= 1."""
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ConfigError(f"model.encoder_offload_interval must be a whole number of steps >= 1, got {interval!r}")


def check_encoder_engines(model: Any, parallel: Any) -> None:
    """One ConfigError for encoder-engine settings that cannot work together or with the run's parallelism."""
    vae_cp_size = int(model.get("ae", {}).get("vae_cp_size", 1) or 1)
    encoder_dp, interval = engine_settings(model)
    pp = int(parallel.get("pp", {}).get("size", 1) or 1)
    if pp > 1:
        for key, on in (("model.ae.vae_cp_size", vae_cp_size > 1), ("model.enable_encoder_dp", encoder_dp),
                        ("model.encoder_offload_interval", interval != 1)):
            if on:
                raise ConfigError(f"{key} with parallel.pp.size={pp}: the encoder engines need the encoders on "
                                  "every rank, pipeline stages hold them only on the first")
    if vae_cp_size > 1 and encoder_dp:
        raise ConfigError("model.ae.vae_cp_size and model.enable_encoder_dp both use the context-parallel group's "
                          "ranks for the VAE (one splits a sample over them, the other gives each its own): pick one")
    check_interval(interval)
    check_vae_cp(vae_cp_size, int(parallel.get("cp", {}).get("size", 1) or 1), pp)
