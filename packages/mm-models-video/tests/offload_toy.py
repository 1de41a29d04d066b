"""Stacked on mm-core's toy: its inputs pass a frozen encoder (a fixed Linear) served by EncodedBatches every
``model.encoder_offload_interval`` batches, with the data iterator's served position (tests of exact resume)."""

from __future__ import annotations

import torch

from mm_core import hookimpl
from mm_core.defaults import to_device
from mm_core.testing import toy
from mm_models_video.encoder_engines import EncodedBatches


@hookimpl
def default_config(task: str) -> dict:
    return {"model": {"encoder_offload_interval": 3}}


def _engine(data_iterator, runtime) -> EncodedBatches:
    engine = getattr(data_iterator, "_offload", None)
    if engine is None:
        encoder = torch.nn.Linear(toy.IN, toy.IN).requires_grad_(False)
        with torch.no_grad():
            encoder.weight.copy_(torch.randn(toy.IN, toy.IN, generator=torch.Generator().manual_seed(5)))
            encoder.bias.zero_()
        engine = data_iterator._offload = EncodedBatches(
            lambda batch: {"x": encoder(batch["x"]), "y": batch["y"]}, runtime.device,
            interval=runtime.config.model.encoder_offload_interval, offload=[encoder], ahead=data_iterator)
    return engine


@hookimpl
def get_batch(data_iterator, runtime) -> dict:
    return to_device(_engine(data_iterator, runtime).next(lambda: next(data_iterator)), runtime.device)
