"""Interleaved encoder offload (``model.encoder_offload_interval: N``): the text encoders live on the CPU and come
to the device once every N steps to encode the next N steps' inputs at once; the steps between train from that
cache. With the data iterator's :class:`~mm_models_video.read_ahead.ReadAhead` a checkpoint taken inside a window
records the position after the batch trained on, so a resumed run encodes the rest again and trains on the same
features as a straight run, whatever ``save_interval`` is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mm_core.errors import ConfigError
from mm_models_video.read_ahead import ReadAhead
from mm_models_video.vae_cp import check_vae_cp

Batch = dict[str, Any]


class EncoderOffload:
    """Serves batches encoded ``interval`` at a time by ``encode`` with ``modules`` on ``device``, else on the CPU.

    ``encode_windows`` counts the windows encoded (the times ``modules`` came to the device).
    """

    def __init__(self, modules: Sequence[nn.Module], encode: Callable[[Batch], Batch], interval: int,
                 device: torch.device, ahead: ReadAhead | None = None) -> None:
        if not isinstance(interval, int) or interval < 1:
            raise ConfigError(f"model.encoder_offload_interval must be a whole number of steps >= 1, got {interval!r}")
        self.modules, self.encode, self.interval = list(modules), encode, interval
        self.device, self.ahead = torch.device(device), ahead
        self.cache: deque[tuple[Batch, dict | None]] = deque()
        self.encode_windows = 0
        self._place(torch.device("cpu"))

    def _place(self, device: torch.device) -> None:
        for module in self.modules:
            module.to(device)

    def next(self, read: Callable[[], Batch]) -> Batch:
        """The features of the next step's batch (``read`` gives raw batches)."""
        if not self.cache:
            raws = []
            for _ in range(self.interval):
                batch = read()
                raws.append((batch, self.ahead.position() if self.ahead is not None else None))
            self._place(self.device)
            try:
                self.cache.extend((self.encode(batch), position) for batch, position in raws)
            finally:
                self._place(torch.device("cpu"))
            self.encode_windows += 1
        features, position = self.cache.popleft()
        if position is not None:
            self.ahead.served(position)
        return features


def check_encoder_engines(model: Any, parallel: Any) -> None:
    """One ConfigError for encoder-engine settings that cannot work together or with the run's parallelism."""
    vae_cp_size = int(model.get("ae", {}).get("vae_cp_size", 1) or 1)
    encoder_dp = bool(model.get("enable_encoder_dp", False))
    interval = model.get("encoder_offload_interval", 1)
    pp = int(parallel.get("pp", {}).get("size", 1) or 1)
    if pp > 1:
        for key, on in (("model.ae.vae_cp_size", vae_cp_size > 1), ("model.enable_encoder_dp", encoder_dp),
                        ("model.encoder_offload_interval", interval not in (None, 1))):
            if on:
                raise ConfigError(f"{key} with parallel.pp.size={pp}: the encoder engines need the encoders on "
                                  "every rank, pipeline stages hold them only on the first")
    if vae_cp_size > 1 and encoder_dp:
        raise ConfigError("model.ae.vae_cp_size and model.enable_encoder_dp both use the context-parallel group's "
                          "ranks for the VAE (one splits a sample over them, the other gives each its own): pick one")
    if interval is not None and (not isinstance(interval, int) or interval < 1):
        raise ConfigError(f"model.encoder_offload_interval must be a whole number of steps >= 1, got {interval!r}")
    check_vae_cp(vae_cp_size, int(parallel.get("cp", {}).get("size", 1) or 1), pp)
