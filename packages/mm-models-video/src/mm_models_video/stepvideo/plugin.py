"""The ``stepvideo`` plugin: Step-Video T2V / TI2V training, feature extraction and generation through mm's hooks."""

from __future__ import annotations

import torch

from mm_core import ContextParallelPlan, ParallelPlan, PipelinePlan, hookimpl
from mm_core.config import Config
from mm_core.data_iter import DataIterator
from mm_core.runtime import Runtime
from mm_models_video.encoder_engines import FeatureEncoder, check_encoder_engines, engine_batch, fsdp_ignored
from mm_models_video.flow_matching import velocity_loss
from mm_models_video.frozen import FROZEN
from mm_models_video.infer_hint import print_infer_hint
from mm_models_video.lora_targets import STEPVIDEO_BLOCK
from mm_models_video.stepvideo import model_json, schema
from mm_models_video.stepvideo.build import build_model
from mm_models_video.stepvideo.convert import register_converters  # noqa: F401 (mm-convert hook)
from mm_models_video.stepvideo.data import build_train_loader, check_clip_fits, example_prompt
from mm_models_video.stepvideo.extract import extract_features as run_extraction
from mm_models_video.stepvideo.infer import generate
from mm_models_video.stepvideo.model import Carry, StepVideo, run_block
from mm_models_video.stepvideo.tp import tensor_parallel_plan
from mm_models_video.vae_cp import vae_cp_group

# The embedded run: a tiny Step-Video T2V on generated clips, about a minute on two CPU cores.
TRAINING = {
    "train_iters": 60,
    "micro_batch_size": 4,
    "global_batch_size": 4,
    "lr": 2.0e-3,
    "lr_warmup_iters": 5,
    "bf16": False,
    "save_interval": 60,
}

MODEL_INPUTS = (
    "latents", "prompt_embeds", "prompt_mask", "clip_embeds", "image_latents", "video", "prompt", "noise_seeds"
)
# The predictor's modules before and after its blocks: on the first and the last pipeline stage.
PP_PRE = ("pos_embed", "rope", "adaln_single", "caption_norm", "caption_projection", "clip_projection")
PP_POST = ("norm_out", "scale_shift_table", "proj_out")


@hookimpl
def default_config(task: str) -> dict:
    """The model.json / data.json sections of Step-Video and the tiny embedded run."""
    return {
        "model": schema.MODEL,
        "data": schema.DATA,
        "training": TRAINING,
        "logging": {"tensorboard": False},
        "inference": schema.INFERENCE,
        "extract": schema.EXTRACT,
    }


@hookimpl
def model_provider(config: Config, runtime: Runtime) -> StepVideo:
    """Build the StepVideo (on the CPU; the engines place it) and check the data's clip shape against it.

    With ``model.ae.vae_cp_size`` its VAE encodes each clip split over that many ranks of the CP group.
    """
    check_encoder_engines(config.model, config.parallel)
    model = build_model(model_json.with_data_tokenizers(config))
    check_clip_fits(config, model.predictor.config.patch_size)
    if config.model.ae.vae_cp_size > 1:
        model.vae_cp_group = vae_cp_group(runtime.submesh("cp").get_group(), config.model.ae.vae_cp_size)
    return model


@hookimpl
def parallel_plan(model: StepVideo, config: Config) -> ParallelPlan:
    """FSDP2 shards each transformer block; CP splits the tokens entering the blocks; PP cuts the block list; TP
    splits each block's heads and feed-forward (``tp``).

    CP splits after the patch embedding (with the RoPE tables, computed for the whole sequence, so each token keeps
    its position) and gathers after ``proj_out``; the self-attention goes through ``mm_parallel.attention``. Under
    PP the first stage encodes, noises and embeds (``StepVideo.embed``), the last predicts (``StepVideo.predict``).
    MindSpeed-MM's module paths in an fsdp2 yaml resolve through ``model_json.MINDSPEED_MODULES``. With the encoder
    engines on, FSDP2 leaves the frozen encoders whole: they encode in ``get_batch``.
    """
    predictor = model.predictor
    return ParallelPlan(
        fsdp_modules=["predictor.transformer_blocks.{*}"],
        fsdp_ignored=fsdp_ignored(config.model, FROZEN),
        cp=ContextParallelPlan(
            split_inputs={"predictor.transformer_blocks.0": 1},
            split_outputs={"predictor.rope": 1},
            gather_outputs={"predictor.proj_out": 1},
            heads=predictor.config.num_attention_heads,
        ),
        pipeline=PipelinePlan(
            layers="predictor.transformer_blocks",
            pre=lambda model, batch: tuple(model.embed(**model_inputs(batch))),
            layer=lambda block, carry: tuple(run_block(block, carry)),
            post=lambda model, carry, batch: model.predict(Carry(*carry)),
            pre_modules=[*FROZEN, *(f"predictor.{name}" for name in PP_PRE if hasattr(predictor, name))],
            post_modules=[f"predictor.{name}" for name in PP_POST],
            num_layers=config.model.predictor.pipeline_num_layers,
        ),
        tp=tensor_parallel_plan(predictor),
        lora_targets=STEPVIDEO_BLOCK,
        module_aliases=model_json.MINDSPEED_MODULES,
    )


@hookimpl
def datasets_provider(config: Config, runtime: Runtime) -> tuple:
    """This rank's training dataloader (videos or extracted features); no validation or test split."""
    return build_train_loader(config, runtime), None, None


@hookimpl
def get_batch(data_iterator: DataIterator, runtime: Runtime, model: torch.nn.Module) -> dict:
    """The next batch on the device, with per-sample noise seeds from (training seed, epoch, index) of its items.

    With context parallelism only cp rank 0 reads it; the other ranks of its group receive it. With
    ``model.enable_encoder_dp`` or ``model.encoder_offload_interval`` it comes encoded (``encoder_engines``).
    """
    return engine_batch(data_iterator, runtime, model, lambda step: FeatureEncoder(step.features, step.offloaded()))


def model_inputs(batch: dict) -> dict:
    """The batch entries StepVideo takes: the clip and caption (raw or as features) and the noise seeds."""
    return {key: batch[key] for key in MODEL_INPUTS if key in batch}


@hookimpl
def forward_step(batch: dict, model: torch.nn.Module, runtime: Runtime) -> dict:
    """Run the composite on the batch's clip and caption (raw or as features)."""
    return model(**model_inputs(batch))


@hookimpl
def loss_func(output: dict, batch: dict, runtime: Runtime) -> tuple[torch.Tensor, dict]:
    """Flow-matching loss: MSE between the predicted and the true velocity (x0 - ε); counts latent tokens."""
    return velocity_loss(output)


@hookimpl
def after_training(config: Config, runtime: Runtime, checkpoint) -> None:
    """On rank 0, say where the checkpoint is and which ``mm infer`` command turns it into a video."""
    if runtime.is_main and checkpoint is not None:
        image = " --image first_frame.png" if config.model.task == "i2v" else ""
        print_infer_hint("stepvideo", runtime, checkpoint, example_prompt(config), image)


@hookimpl
def inference(config: Config, runtime: Runtime) -> str:
    """``mm infer``: generate videos from the inference section's prompt (and ``--image`` for TI2V) as mp4."""
    return generate(config, runtime)


@hookimpl
def extract_features(config: Config, runtime: Runtime) -> str:
    """``mm extract``: encode the data section's videos and captions once into feature shards."""
    return run_extraction(config, runtime)
