"""A video family's transformer folder in diffusers' layout (config.json and safetensors), read and written with its
tensors checked against the model the config describes; the converters of every family share it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from mm_convert import ConvertError, TensorSource, read_safetensors, staged_output, write_safetensors

WEIGHTS = "diffusion_pytorch_model"
STALE_WEIGHTS = (f"{WEIGHTS}*.safetensors", f"{WEIGHTS}.safetensors.index.json")


def read_config(folder: Path, hint: str = "") -> dict:
    """``folder``'s config.json; ConvertError when it has none (``hint`` says which folder would)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConvertError(f"{folder} has no config.json{f' ({hint})' if hint else ''}")
    return json.loads(path.read_text(encoding="utf-8"))


def state_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    """The shape of every tensor of ``model``'s state dict (a meta model: no memory)."""
    return {k: v.shape for k, v in model.state_dict().items()}


def read_checked(folder: Path, meta_model: Callable[[dict], torch.nn.Module], hint: str = "") -> tuple[TensorSource,
                                                                                                        dict]:
    """A transformer folder's tensors, checked against the model of its config.json, and that config."""
    config = read_config(folder, hint)
    tensors = read_safetensors(folder)
    tensors.check(state_shapes(meta_model(config)), f"its config.json ({Path(folder) / 'config.json'})")
    return tensors, config


def write_checked(folder: Path, tensors: TensorSource, model: torch.nn.Module, what: str, shard_size: str) -> None:
    """Write ``tensors`` and ``model``'s config into ``folder``, after checking they are ``model``'s (``what``)."""
    tensors.check(state_shapes(model), what)
    write_safetensors(folder, tensors, WEIGHTS, shard_size)
    model.save_config(folder)


def write_folder(target: Path, tensors: TensorSource, model: torch.nn.Module, what: str, shard_size: str) -> None:
    """:func:`write_checked` into ``target`` atomically, replacing the weights of an earlier conversion there."""
    with staged_output(target, stale=STALE_WEIGHTS) as out:
        write_checked(out, tensors, model, what, shard_size)
