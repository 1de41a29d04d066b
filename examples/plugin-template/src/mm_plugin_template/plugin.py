"""The plugin: mm calls these hooks to build the model and the data and to compute the loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mm_core import ConfigError, ParallelPlan, hookimpl
from mm_core.config import Config
from mm_core.runtime import Runtime
from mm_data.sampler import build_dataloader
from mm_plugin_template.data import CLASSES, ShapesDataset
from mm_plugin_template.model import ShapeViT


@hookimpl
def default_config(task: str) -> dict:
    """This plugin's sections with their defaults (also the schema user configs are checked against)."""
    return {
        "model": {"image_size": 32, "patch_size": 8, "hidden": 64, "layers": 2, "heads": 4},
        "data": {"train_samples": 2048, "valid_samples": 256},
        # The embedded run: `mm run --plugin plugin_template` with no config trains in seconds on the CPU.
        "training": {"train_iters": 200, "micro_batch_size": 16, "global_batch_size": 16, "lr": 2.0e-3,
                     "lr_warmup_iters": 5, "bf16": False, "save_interval": 200, "eval_interval": 100, "eval_iters": 4},
        "logging": {"tensorboard": False},
    }


@hookimpl
def model_provider(config: Config, runtime: Runtime) -> torch.nn.Module:
    """The ShapeViT the model section describes, on the CPU (mm's engines place and shard it)."""
    model = config.model
    if model.image_size % model.patch_size:
        raise ConfigError(f"model.image_size {model.image_size} must be a multiple of model.patch_size "
                          f"{model.patch_size}")
    return ShapeViT(model.image_size, model.patch_size, model.hidden, model.layers, model.heads, len(CLASSES))


@hookimpl
def parallel_plan(model: torch.nn.Module, config: Config) -> ParallelPlan:
    """With parallel.fsdp2 on and no sub_modules_to_wrap, each encoder layer is one FSDP2 unit."""
    return ParallelPlan(fsdp_modules=["encoder.layers.{*}"])


def _loader(num_samples: int, seed: int, config: Config, runtime: Runtime):
    dataset = ShapesDataset(num_samples, config.model.image_size, seed)
    # A resumable loader of this rank's share of every global batch (mm resumes mid-epoch with it).
    return build_dataloader(dataset, config.training.micro_batch_size, runtime.dp_rank, runtime.dp_size,
                            seed=config.training.seed)


@hookimpl
def datasets_provider(config: Config, runtime: Runtime) -> tuple:
    """(train, valid, None): this rank's loaders over generated shapes."""
    seed = config.training.seed
    return (_loader(config.data.train_samples, seed, config, runtime),
            _loader(config.data.valid_samples, seed + 1, config, runtime), None)


@hookimpl
def forward_step(batch: dict, model: torch.nn.Module, runtime: Runtime) -> torch.Tensor:
    """Logits of the batch's images (the batch is already on runtime.device: mm-core's get_batch)."""
    return model(batch["image"])


@hookimpl
def loss_func(output: torch.Tensor, batch: dict, runtime: Runtime) -> tuple[torch.Tensor, dict]:
    """Cross-entropy, and accuracy as a logged metric."""
    loss = F.cross_entropy(output.float(), batch["label"])
    accuracy = (output.argmax(dim=-1) == batch["label"]).float().mean()
    return loss, {"accuracy": float(accuracy)}
