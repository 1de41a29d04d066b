"""The ``custom_dit`` plugin: the guide's pretrain_custom.py entry functions as mm hooks."""

from __future__ import annotations

import torch

from mm_core import ParallelPlan, hookimpl
from mm_core.config import Config
from mm_core.runtime import Runtime
from mm_models_video.custom_dit import schema
from mm_models_video.custom_dit.build import build_model
from mm_models_video.custom_dit.data import build_train_loader, check_clip_fits
from mm_models_video.custom_dit.model import CustomModel
from mm_models_video.lora_targets import WAN_BLOCK

# The embedded run: the tiny CustomDiT on generated clips, in seconds on the CPU.
TRAINING = {
    "train_iters": 30,
    "micro_batch_size": 2,
    "global_batch_size": 2,
    "lr": 2.0e-3,
    "lr_warmup_iters": 3,
    "bf16": False,
    "save_interval": 30,
}

MODEL_INPUTS = ("video", "prompt_ids", "prompt_mask")


@hookimpl
def default_config(task: str) -> dict:
    """The guide's model.json and data.json sections, and the tiny embedded run."""
    return {"model": schema.MODEL, "data": schema.DATA, "training": TRAINING, "logging": {"tensorboard": False}}


@hookimpl
def model_provider(config: Config, runtime: Runtime) -> CustomModel:
    """Build the CustomModel (on the CPU; the engines place it) and check the data's clip shape against it."""
    model = build_model(config.model)
    check_clip_fits(config, model)
    return model


@hookimpl
def parallel_plan(model: CustomModel, config: Config) -> ParallelPlan:
    """FSDP2 shards each DiT block when fsdp2_config.yaml names no sub_modules_to_wrap; LoRA adapts the blocks'
    attention and FFN projections by default."""
    return ParallelPlan(fsdp_modules=["predictor.blocks.{*}"], lora_targets=WAN_BLOCK)


@hookimpl
def datasets_provider(config: Config, runtime: Runtime) -> tuple:
    """This rank's CustomT2VDataset loader; no validation or test split."""
    return build_train_loader(config, runtime), None, None


@hookimpl
def forward_step(batch: dict, model: torch.nn.Module, runtime: Runtime) -> dict:
    """``model(video, prompt_ids, prompt_mask)``: the composite returns its per-sample losses."""
    return model(**{key: batch[key] for key in MODEL_INPUTS})


@hookimpl
def loss_func(output: dict, batch: dict, runtime: Runtime) -> tuple[torch.Tensor, dict]:
    """The mean of the per-sample flow-matching losses; counts latent tokens for tokens/s."""
    return output["loss"].mean(), {"tokens": float(output["tokens"])}
