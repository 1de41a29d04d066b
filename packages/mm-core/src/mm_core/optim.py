"""AdamW and the Megatron-style learning-rate schedule (warmup, then cosine, linear or constant)."""

from __future__ import annotations

import math

import torch

from mm_core.config import Config
from mm_core.errors import ConfigError


def build_optimizer(model: torch.nn.Module, training: Config, device: torch.device) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on biases and norms; fused on accelerators."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": training.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=training.lr,
        betas=(training.adam_beta1, training.adam_beta2),
        eps=training.adam_eps,
        fused=device.type in ("cuda", "npu") or None,
    )


def warmup_iters(training: Config) -> int:
    """The warmup length: ``lr_warmup_fraction`` of the decay span when set (Megatron's flag), else
    ``lr_warmup_iters``."""
    fraction = training.get("lr_warmup_fraction")
    if fraction is None:
        return training.lr_warmup_iters
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"training.lr_warmup_fraction must be between 0 and 1, got {fraction}")
    return round(fraction * (training.lr_decay_iters or training.train_iters))


def lr_factor(step: int, training: Config) -> float:
    """Multiplier of ``training.lr`` at optimizer step ``step`` (0-based).

    Warmup rises linearly from ``lr_warmup_init`` (0 by default) to ``lr``, reaching it on the last warmup step.
    """
    warmup = warmup_iters(training)
    if warmup and step < warmup:
        start = training.get("lr_warmup_init", 0.0) / training.lr if training.lr else 0.0
        return start + (1.0 - start) * (step + 1) / warmup
    style = training.lr_decay_style
    if style == "constant":
        return 1.0
    total = training.lr_decay_iters or training.train_iters
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    floor = training.min_lr / training.lr if training.lr else 0.0
    shape = 1.0 - progress if style == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, training: Config) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following :func:`lr_factor`."""
    warmup_iters(training)  # a bad warmup setting fails here, before the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, training))
