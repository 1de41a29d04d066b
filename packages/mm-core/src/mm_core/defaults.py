"""mm-core's own hook implementations, registered first and tried last: every plugin can override them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mm_core.hookspecs import hookimpl

CORE_DEFAULTS: dict[str, Any] = {
    "model": {},
    "data": {"on_bad_sample": "skip"},
    "parallel": {
        "fsdp2": {},
        "cp": {"size": 1, "mode": "ulysses", "ulysses_degree": None, "window_size": None},
        "pp": {"size": 1, "schedule": "1f1b", "pipeline_num_layers": None, "virtual_stages": 1},
        "tp": {"size": 1, "sequence_parallel": False},
        "recompute": {"granularity": None, "method": "uniform", "num_layers": None},
    },
    "training": {
        "output_dir": None,
        "seed": 1234,
        "train_iters": 100,
        "micro_batch_size": 1,
        "global_batch_size": 8,
        "lr": 1.0e-4,
        "min_lr": 0.0,
        "lr_warmup_iters": 0,
        "lr_warmup_fraction": None,
        "lr_warmup_init": 0.0,
        "lr_decay_style": "cosine",
        "lr_decay_iters": None,
        "weight_decay": 0.0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_eps": 1.0e-8,
        "clip_grad": 1.0,
        "skip_nonfinite_steps": 0,
        "bf16": True,
        "device": None,
        "save_interval": 50,
        "keep_last": 3,
        "resume": False,
        "eval_interval": 0,
        "eval_iters": 10,
    },
    "logging": {"log_interval": 1, "tensorboard": True, "progress_bar": True, "peak_tflops": None},
    "inference": {},
    "extract": {},
}


@hookimpl(trylast=True)
def default_config(task: str) -> dict:
    """mm-core's sections: training, logging, parallel, and empty plugin sections."""
    return CORE_DEFAULTS


def to_device(value: Any, device: torch.device) -> Any:
    """Move tensors inside nested dicts, lists and tuples to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


@hookimpl(trylast=True)
def get_batch(data_iterator, runtime) -> dict:
    """Take the next batch and move its tensors to the runtime's device."""
    return to_device(next(data_iterator), runtime.device)


@hookimpl(trylast=True)
def forward_step(batch, model, runtime):
    """Call ``model(**batch)``."""
    return model(**batch)


@hookimpl(trylast=True)
def parallelize_model(model, plan, config, runtime):
    """Without an engine: move to the device and wrap in DDP when gradients differ between ranks.

    Context-parallel ranks see different parts of one sequence, so DDP averages over them too.
    """
    model = model.to(runtime.device)
    if runtime.dp_size * runtime.dims["cp"] > 1:
        from torch.nn.parallel import DistributedDataParallel

        group = runtime.submesh("dp_cp").get_group() if runtime.dims["cp"] > 1 else runtime.dp_group
        device_ids = [runtime.device.index] if runtime.device.type != "cpu" else None
        model = DistributedDataParallel(model, device_ids=device_ids, process_group=group)
    return model
