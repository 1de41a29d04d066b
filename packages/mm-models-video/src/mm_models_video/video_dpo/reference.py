"""The frozen reference predictor beside the trained one, and the plan that shards and splits it like the actor.

The reference is ``model.reference``, a copy of ``model.predictor`` made when the model is built: no gradients, so
no optimizer state, and left out of checkpoints (they are rebuilt from the model's source, as the actor was at
step 0). For its forward it takes the predictor's place in the composite for one call.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from mm_core import ParallelPlan
from mm_core.config import Config
from mm_core.errors import ConfigError, PluginError

ACTOR, REFERENCE = "predictor", "reference"


def _drop_reference(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(f"{prefix}{REFERENCE}.")]:
        del state_dict[key]


def _allow_missing_reference(module: nn.Module, incompatible) -> None:
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith(f"{REFERENCE}.")]


def add_reference(model: nn.Module) -> nn.Module:
    """Give ``model`` a frozen copy of its predictor as ``model.reference``, outside its state dict."""
    predictor = getattr(model, ACTOR, None)
    if not isinstance(predictor, nn.Module):
        raise PluginError(f"video_dpo needs a composite with a 'predictor' module (the trained transformer); "
                          f"{type(model).__name__} has none")
    if not hasattr(model, "diffusion") or not callable(getattr(model.diffusion, "draw", None)):
        raise PluginError(f"video_dpo needs a flow-matching composite (model.diffusion.draw); {type(model).__name__} "
                          "has no such diffusion")
    if any(p.is_meta for p in predictor.parameters()):
        raise PluginError("video_dpo copies the predictor's weights when the model is built, but they are on the "
                          "meta device; build the model with its weights")
    model.reference = copy.deepcopy(predictor).requires_grad_(False).eval()
    model.register_state_dict_post_hook(_drop_reference)
    model.register_load_state_dict_post_hook(_allow_missing_reference)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The composite inside a DDP wrapper (FSDP2 modules are the composite itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def reference_in_place(model: nn.Module) -> Iterator[nn.Module]:
    """The composite with the reference as its predictor (in eval mode) for the duration, then as it was."""
    actor, reference = getattr(model, ACTOR), getattr(model, REFERENCE)
    reference.eval()
    setattr(model, ACTOR, reference)
    setattr(model, REFERENCE, actor)
    try:
        yield model
    finally:
        setattr(model, ACTOR, actor)
        setattr(model, REFERENCE, reference)


def _mirror(path: str) -> str | None:
    """The reference's module path for one of the actor's (``predictor.x`` -> ``reference.x``)."""
    return f"{REFERENCE}{path[len(ACTOR):]}" if path == ACTOR or path.startswith(f"{ACTOR}.") else None


def _with_mirrors(paths: Mapping[str, int]) -> dict[str, int]:
    return {**paths, **{_mirror(p): dim for p, dim in paths.items() if _mirror(p)}}


def plan_with_reference(plan: ParallelPlan, config: Config) -> ParallelPlan:
    """The model plugin's plan, its FSDP2 units and CP splits repeated for the reference; no PP or TP."""
    for key, what in (("pp", "pipeline"), ("tp", "tensor")):
        if config.parallel[key].size > 1:
            raise ConfigError(f"parallel.{key}.size {config.parallel[key].size}: video_dpo runs with FSDP2, "
                              f"context parallelism and data parallelism, not {what} parallelism yet")
    fsdp = [*plan.fsdp_modules, *(m for m in map(_mirror, plan.fsdp_modules) if m)]
    cp = plan.cp
    if cp is not None:
        cp = dataclasses.replace(cp, split_inputs=_with_mirrors(cp.split_inputs),
                                 split_outputs=_with_mirrors(cp.split_outputs),
                                 gather_outputs=_with_mirrors(cp.gather_outputs))
    return dataclasses.replace(plan, fsdp_modules=fsdp, cp=cp, pipeline=None, tp=None)


def timesteps_of(model: nn.Module, seeds: list[int], device: torch.device) -> torch.Tensor:
    """The training timesteps (1000 σ) the composite draws for ``seeds``: its diffusion's own draw, whose
    timestep index comes first from each seed's generator, whatever the latents' shape."""
    diffusion = model.diffusion
    _, indices = diffusion.draw(torch.zeros(len(seeds), 1, device=device), seeds)
    return diffusion.timesteps.to(device)[indices]


ENCODERS = ("encode_video", "encode_text")


@contextlib.contextmanager
def encoded_once(model: nn.Module) -> Iterator[None]:
    """The composite's frozen encoders (``encode_video``, ``encode_text``) run once per input for the duration.

    The actor's and the reference's passes see the same clips and captions: the second pass reuses the first's
    latents and text features instead of running the VAE and text encoder again.
    """
    patched = []
    for name in ENCODERS:
        encode = getattr(model, name, None)
        if callable(encode) and name not in vars(model):
            setattr(model, name, _memo(encode))
            patched.append(name)
    try:
        yield
    finally:
        for name in patched:
            delattr(model, name)


def _memo(encode):
    cache: dict[int, tuple[object, object]] = {}

    def encode_once(value, *args, **kwargs):
        if args or kwargs:
            return encode(value, *args, **kwargs)
        if id(value) not in cache:
            cache[id(value)] = (value, encode(value))  # the input is kept so that its id stays its own
        return cache[id(value)][1]

    return encode_once
