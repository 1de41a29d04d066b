"""The ``video_dpo`` plugin: Diffusion-DPO post-training stacked on a flow-matching video plugin.

``mm run --plugin wan2_1 --plugin video_dpo`` (or stepvideo...): the model plugin builds its composite, reads the
clips and draws the noise; this plugin wraps its model (a frozen reference predictor beside the trained one), its
plan (the reference sharded and split like the actor) and its data (preference pairs), and replaces the forward
and the loss. Chosen and rejected clips of a pair share noise and timestep (the same per-sample seed).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mm_core import ParallelPlan, hookimpl
from mm_core.checkpoint import latest_checkpoint, load_model_state
from mm_core.config import Config
from mm_core.errors import CheckpointError, PluginError
from mm_core.runtime import Runtime
from mm_data.sampler import EpochTagged
from mm_models_video.video_dpo import schema
from mm_models_video.video_dpo.data import PAIR_ENTRIES, build_preference_loader
from mm_models_video.video_dpo.histogram import pair_weight, read_histogram
from mm_models_video.video_dpo.loss import log_likelihood, per_sample_mse, sigmoid_dpo
from mm_models_video.video_dpo.reference import (
    add_reference,
    encoded_once,
    plan_with_reference,
    reference_in_place,
    timesteps_of,
    unwrap,
)

# The embedded run: a few generated smooth-vs-flicker pairs, about a minute on two CPU cores.
TRAINING = {
    **schema.TRAINING,
    "train_iters": 30,
    "micro_batch_size": 2,
    "global_batch_size": 2,
    "lr": 1.0e-3,
    "lr_warmup_iters": 0,
    "lr_decay_style": "constant",
    "bf16": False,
    "save_interval": 30,
}
# Loss scale of the tiny run: its errors move by percents, not by the 14B model's ppm (MindSpeed-MM uses 2000).
DPO = {**schema.DPO, "loss_beta": 0.02}
STACK_HINT = "video_dpo stacks on a model plugin: mm run --plugin wan2_1 --plugin video_dpo"
REWARD_METRICS = ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")
# Batch entries that are bookkeeping, not model inputs.
NOT_INPUTS = ("index", "epoch", *PAIR_ENTRIES)


def _stacked(result: Any, hook: str) -> Any:
    if result is None:
        raise PluginError(f"no plugin below video_dpo answers {hook}: {STACK_HINT}")
    return result


@hookimpl
def default_config(task: str) -> dict:
    """model.dpo (MindSpeed-MM's posttrain block) and the DPO training flags, with the tiny embedded run."""
    return {"model": {"dpo": DPO}, "training": TRAINING}


@hookimpl(wrapper=True)
def datasets_provider(config: Config, runtime: Runtime):
    """The model plugin's loader read as preference pairs: its dataset's preprocessing, the pairs' clips."""
    schema.check(config)
    train, valid, test = _stacked((yield), "datasets_provider")
    template = getattr(train, "dataset", None)
    if isinstance(template, EpochTagged):
        template = template.dataset
    return build_preference_loader(config, runtime, template), None, None


@hookimpl(wrapper=True)
def model_provider(config: Config, runtime: Runtime):
    """The model plugin's composite (loaded from ``training.load`` when set) with a frozen reference predictor."""
    model = _stacked((yield), "model_provider")
    if config.training.load:
        load_model_state(start_checkpoint(Path(config.training.load).expanduser()), model)
    return add_reference(model)


def start_checkpoint(path: Path) -> Path:
    """``training.load``: a checkpoint folder itself, or the newest one of a run folder (or its checkpoints/)."""
    if (path / ".metadata").is_file():
        return path
    for root in (path / "checkpoints", path):
        if root.is_dir() and (newest := latest_checkpoint(root)) is not None:
            return newest
    raise CheckpointError(f"training.load {path} is neither an mm checkpoint (step_XXXXXXXX with .metadata) nor a "
                          "run folder holding checkpoints/")


@hookimpl(wrapper=True)
def parallel_plan(model: torch.nn.Module, config: Config):
    """The model plugin's plan with the reference's FSDP2 units and CP splits beside the actor's."""
    plan = yield
    return plan_with_reference(plan or ParallelPlan(), config)


def doubled(batch: dict) -> dict:
    """The model inputs of a batch of pairs: chosen then rejected clips, each with its pair's caption and seed."""
    inputs = {}
    for key, value in batch.items():
        if key in NOT_INPUTS:
            continue
        if isinstance(value, torch.Tensor):
            inputs[key] = torch.cat([value, value])
        elif isinstance(value, (list, tuple)):
            inputs[key] = [*value, *value]
        else:
            inputs[key] = value
    inputs["video"] = torch.cat([batch["video"], batch["video_rejected"]])
    return inputs


@hookimpl
def forward_step(batch: dict, model: torch.nn.Module, runtime: Runtime) -> dict:
    """The actor's and the frozen reference's predictions for both clips of each pair, and the pairs' timesteps."""
    if "noise_seeds" not in batch:
        raise PluginError("video_dpo needs per-sample noise seeds in the batch (batch['noise_seeds'], as the video "
                          "plugins' get_batch gives them) so that both clips of a pair share noise and timestep")
    inputs = doubled(batch)
    composite = unwrap(model)  # DDP's module: the reference has no gradients to reduce
    with encoded_once(composite):
        actor = model(**inputs)
        with torch.no_grad(), reference_in_place(composite):
            reference = composite(**inputs)
    timesteps = timesteps_of(composite, list(batch["noise_seeds"]), batch["video"].device)
    return {"actor": actor, "reference": reference, "timesteps": timesteps}


@functools.lru_cache(maxsize=4)
def _histogram(path: str) -> dict:
    return read_histogram(path)


def pair_weights(batch: dict, config: Config, device: torch.device) -> torch.Tensor | None:
    """Each pair's histogram weight, or None with weight_alpha 0."""
    dpo = config.model.dpo
    if not dpo.weight_alpha:
        return None
    histogram = _histogram(str(dpo.histogram_path))
    weights = [pair_weight(float(s), float(r), histogram, dpo.weight_alpha, dpo.weight_beta)
               for s, r in zip(batch["score"].tolist(), batch["score_rejected"].tolist())]
    return torch.tensor(weights, device=device)


@hookimpl
def loss_func(output: dict, batch: dict, runtime: Runtime) -> tuple[torch.Tensor, dict]:
    """The pair-weighted sigmoid DPO loss (plus pref_ftx × the chosen error); reward accuracy and margin."""
    config, training = runtime.config, runtime.config.training
    timesteps = output["timesteps"].repeat(2)
    actor = log_likelihood(per_sample_mse(output["actor"]["pred"], output["actor"]["target"]), timesteps,
                           config.model.dpo.loss_beta)
    with torch.no_grad():
        reference = log_likelihood(per_sample_mse(output["reference"]["pred"], output["reference"]["target"]),
                                   timesteps, config.model.dpo.loss_beta)
    actor_chosen, actor_rejected = actor.chunk(2)
    reference_chosen, reference_rejected = reference.chunk(2)
    terms = sigmoid_dpo(actor_chosen, actor_rejected, reference_chosen, reference_rejected, training.dpo_beta,
                        training.dpo_label_smoothing)
    losses = terms.losses
    weights = pair_weights(batch, config, losses.device)
    if weights is not None:
        losses = losses * weights
    if training.pref_ftx > 1e-6:
        losses = losses - training.pref_ftx * actor_chosen
    margin = terms.chosen_rewards - terms.rejected_rewards
    rewards = dp_mean(torch.stack([(margin > 0).float().mean(), margin.mean(), terms.chosen_rewards.mean(),
                                   terms.rejected_rewards.mean()]), runtime)
    return losses.mean(), {**dict(zip(REWARD_METRICS, rewards.tolist())), "tokens": float(output["actor"]["tokens"])}


def dp_mean(values: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """``values`` averaged over the data-parallel ranks (each saw other pairs), as MindSpeed-MM logs them."""
    if getattr(runtime, "dp_size", 1) > 1 and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, group=runtime.dp_group)
        values /= runtime.dp_size
    return values
