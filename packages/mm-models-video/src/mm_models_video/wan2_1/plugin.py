"""The ``wan2_1`` plugin: Wan2.1 text- and image-to-video training, feature extraction and generation through mm's
hooks."""

from __future__ import annotations

from pathlib import Path

import torch

from mm_core import ContextParallelPlan, ParallelPlan, PipelinePlan, hookimpl
from mm_core.config import Config
from mm_core.data_iter import DataIterator
from mm_core.runtime import Runtime
from mm_models_video.encoder_engines import FeatureEncoder, check_encoder_engines, engine_batch, fsdp_ignored
from mm_models_video.flow_matching import velocity_loss
from mm_models_video.frozen import FROZEN
from mm_models_video.infer_hint import print_infer_hint
from mm_models_video.lora_targets import WAN_BLOCK
from mm_models_video.vae_cp import vae_cp_group
from mm_models_video.wan2_1 import schema
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.convert import register_converters  # noqa: F401 (mm-convert hook)
from mm_models_video.wan2_1.cp import use_context_parallel_attention
from mm_models_video.wan2_1.data import build_train_loader, check_clip_fits, example_prompt, write_example_image
from mm_models_video.wan2_1.extract import extract_features as run_extraction
from mm_models_video.wan2_1.flf2v import check_trainable
from mm_models_video.wan2_1.i2v import WanI2V
from mm_models_video.wan2_1.infer import generate
from mm_models_video.wan2_1.mindspeed import MINDSPEED_MODULES, inferred_flavor, task_from_model_type
from mm_models_video.wan2_1.mindspeed_checkpoint import resolve_load
from mm_models_video.wan2_1.model import Carry, WanT2V, run_block
from mm_models_video.wan2_1.tp import tensor_parallel_plan

# The embedded run: a tiny Wan2.1 on generated clips, about a minute on two CPU cores.
TRAINING = {
    "train_iters": 60,
    "micro_batch_size": 4,
    "global_batch_size": 4,
    "lr": 2.0e-3,
    "lr_warmup_iters": 5,
    "bf16": False,
    "save_interval": 60,
}
# The tiny I2V's embedded run (model.task=i2v): its clips cost twice the VAE (first-frame conditioning), so it
# trains fewer steps on shorter clips (Flavor.i2v_num_frames) to stay near a minute; used where the user sets none.
TINY_I2V_TRAINING = {"train_iters": 30, "save_interval": 30}

MODEL_INPUTS = ("latents", "prompt_embeds", "video", "prompt", "noise_seeds")
# I2V's first-frame conditions, when the batch holds them as features.
I2V_INPUTS = ("image_embeds", "condition")
# The same in MindSpeed-MM's feature files (its wan_i2v_processor's outputs: CLIP tokens; mask + first-frame latents).
MINDSPEED_I2V_FEATURES = {"i2v_clip_feature": "image_embeds", "i2v_vae_feature": "condition"}
# The predictor's modules before and after its blocks: on the first and the last pipeline stage.
PP_PRE = ("rope", "patch_embedding", "condition_embedder")
PP_POST = ("norm_out", "proj_out", "scale_shift_table")


@hookimpl
def default_config(task: str) -> dict:
    """The model.json / data.json sections of Wan2.1 and the tiny embedded run."""
    return {
        "model": schema.MODEL,
        "data": schema.DATA,
        "training": TRAINING,
        "logging": {"tensorboard": False},
        "inference": schema.INFERENCE,
        "extract": schema.EXTRACT,
    }


@hookimpl
def model_provider(config: Config, runtime: Runtime) -> WanT2V:
    """Build the WanT2V or WanI2V (on the CPU; the engines place it) and check the data's clip shape against it.

    With context parallelism its self-attention runs through ``mm_parallel.attention`` (see ``cp``); with
    ``model.ae.vae_cp_size`` its VAE encodes each clip split over that many ranks of the CP group.
    """
    settle(config)
    check_encoder_engines(config.model, config.parallel)
    model = build_model(config.model)
    check_trainable(model.predictor)
    check_clip_fits(config, model)
    if config.model.ae.vae_cp_size > 1:
        model.vae_cp_group = vae_cp_group(runtime.submesh("cp").get_group(), config.model.ae.vae_cp_size)
    if runtime.dims["cp"] > 1:
        use_context_parallel_attention(model.predictor)
    return model


@hookimpl
def parallel_plan(model: WanT2V, config: Config) -> ParallelPlan:
    """FSDP2 shards each transformer block; CP splits the tokens entering the blocks; PP cuts the block list; TP
    splits each block's heads and FFN (``tp``).

    CP splits after patch embedding (with the RoPE tables, computed for the whole sequence, so each token keeps its
    position) and gathers after ``proj_out``. Under PP the first stage encodes, noises and embeds
    (``WanT2V.embed``), the last predicts (``WanT2V.predict``). With the encoder engines on, FSDP2 leaves the
    frozen encoders whole: they encode in ``get_batch``.
    """
    frozen = (*FROZEN, *frozen_extra(model))
    return ParallelPlan(
        fsdp_modules=["predictor.blocks.{*}"],
        fsdp_ignored=fsdp_ignored(config.model, frozen),
        cp=ContextParallelPlan(
            split_inputs={"predictor.blocks.0": 1},
            split_outputs={"predictor.rope": 1},
            gather_outputs={"predictor.proj_out": 1},
            heads=model.predictor.config.num_attention_heads,
        ),
        pipeline=PipelinePlan(
            layers="predictor.blocks",
            pre=lambda model, batch: tuple(model.embed(**model_inputs(batch))),
            layer=lambda block, carry: tuple(run_block(block, carry)),
            post=lambda model, carry, batch: model.predict(Carry(*carry)),
            pre_modules=[*frozen, *(f"predictor.{name}" for name in PP_PRE)],
            post_modules=[f"predictor.{name}" for name in PP_POST],
            num_layers=config.model.predictor.pipeline_num_layers,
        ),
        tp=tensor_parallel_plan(model.predictor),
        lora_targets=WAN_BLOCK,
        module_aliases=MINDSPEED_MODULES,
    )


@hookimpl
def datasets_provider(config: Config, runtime: Runtime) -> tuple:
    """This rank's training dataloader (videos or extracted features); no validation or test split."""
    settle(config)
    return build_train_loader(config, runtime), None, None


@hookimpl
def get_batch(data_iterator: DataIterator, runtime: Runtime, model: torch.nn.Module) -> dict:
    """The next batch on the device, with per-sample noise seeds from (training seed, epoch, index) of its items.

    With context parallelism only cp rank 0 reads it; the other ranks of its group receive it. With
    ``model.enable_encoder_dp`` or ``model.encoder_offload_interval`` it comes encoded (``encoder_engines``).
    """
    return engine_batch(data_iterator, runtime, model, lambda wan: FeatureEncoder(wan.features, wan.offloaded()))


def settle(config: Config) -> None:
    """Before any hook reads the model section: give a MindSpeed-MM model.json without a task the task of its
    predictor.model_type and without a flavor the flavor its predictor keys describe, give the tiny I2V its
    embedded run's steps where the user set none, and read ``--load DIR`` (a transformer folder or MindSpeed-MM
    checkpoint) as the predictor's weights."""
    task_from_model_type(config)
    config.model["flavor"] = inferred_flavor(config.model)
    if config.model.task == "i2v" and config.model.flavor == "tiny":
        for key, value in TINY_I2V_TRAINING.items():
            if config.source_of(f"training.{key}") is None:
                config.training[key] = value
    resolve_load(config.model, Path(config.training.output_dir) / "cache")


def frozen_extra(model: WanT2V) -> tuple[str, ...]:
    """The frozen parts beyond the VAE and text encoder that the first pipeline stage holds: I2V's image encoder."""
    return ("image_encoder",) if isinstance(model, WanI2V) else ()


def model_inputs(batch: dict) -> dict:
    """The batch entries the composite takes: the clip and caption (raw or as features), I2V's first-frame features
    (also under MindSpeed-MM's feature names) and the noise seeds."""
    inputs = {key: batch[key] for key in (*MODEL_INPUTS, *I2V_INPUTS) if key in batch}
    inputs.update({ours: batch[theirs] for theirs, ours in MINDSPEED_I2V_FEATURES.items() if theirs in batch})
    return inputs


@hookimpl
def forward_step(batch: dict, model: torch.nn.Module, runtime: Runtime) -> dict:
    """Run the composite on the batch's clip and caption (raw or as features)."""
    return model(**model_inputs(batch))


@hookimpl
def loss_func(output: dict, batch: dict, runtime: Runtime) -> tuple[torch.Tensor, dict]:
    """Flow-matching loss: MSE between the predicted and the true velocity; counts latent tokens."""
    return velocity_loss(output)


@hookimpl
def after_training(config: Config, runtime: Runtime, checkpoint) -> None:
    """On rank 0, say where the checkpoint is and which ``mm infer`` command turns it into a video."""
    if runtime.is_main and checkpoint is not None:
        flags = ""
        if config.model.task == "i2v":
            image = write_example_image(config, runtime.output_dir / "first_frame.png") or "first_frame.png"
            flags = f" --image {image}"
        print_infer_hint("wan2_1", runtime, checkpoint, example_prompt(config), flags)


@hookimpl
def inference(config: Config, runtime: Runtime) -> str:
    """``mm infer``: generate one video from the inference section's prompt and write it as mp4."""
    settle(config)
    return generate(config, runtime)


@hookimpl
def extract_features(config: Config, runtime: Runtime) -> str:
    """``mm extract``: encode the data section's videos and captions once into feature shards."""
    settle(config)
    return run_extraction(config, runtime)
