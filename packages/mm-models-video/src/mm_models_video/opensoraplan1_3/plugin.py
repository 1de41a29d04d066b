"""The ``opensoraplan1_3`` plugin: OpenSoraPlan 1.3 text- and image-to-video training and generation."""

from __future__ import annotations

import torch

from mm_core import ContextParallelPlan, ParallelPlan, PipelinePlan, hookimpl
from mm_core.config import Config
from mm_core.data_iter import DataIterator
from mm_core.runtime import Runtime
from mm_models_video.encoder_engines import FeatureEncoder, check_encoder_engines, engine_batch, fsdp_ignored
from mm_models_video.frozen import FROZEN
from mm_models_video.infer_hint import print_infer_hint
from mm_models_video.opensoraplan1_3 import schema
from mm_models_video.opensoraplan1_3.build import build_model
from mm_models_video.opensoraplan1_3.convert import register_converters  # noqa: F401 (mm-convert hook)
from mm_models_video.opensoraplan1_3.data import build_train_loader, check_clips, example_prompt, parse_data, text_len
from mm_models_video.opensoraplan1_3.diffusion import diffusion_loss
from mm_models_video.opensoraplan1_3.extract import extract_features as run_extraction
from mm_models_video.opensoraplan1_3.flavors import flavor_name
from mm_models_video.opensoraplan1_3.infer import generate
from mm_models_video.opensoraplan1_3.inpaint import OpenSoraPlanI2V
from mm_models_video.opensoraplan1_3.mindspeed import MINDSPEED_MODULES
from mm_models_video.opensoraplan1_3.model import Carry, OpenSoraPlanT2V, run_block
from mm_models_video.opensoraplan1_3.tp import tensor_parallel_plan
from mm_models_video.vae_cp import vae_cp_group

# The embedded run: a tiny OpenSoraPlan on generated clips, about a minute on two CPU cores.
TRAINING = {
    "train_iters": 60,
    "micro_batch_size": 4,
    "global_batch_size": 4,
    "lr": 2.0e-3,
    "lr_warmup_iters": 5,
    "bf16": False,
    "save_interval": 60,
}

# noise, timesteps and conditions come with the features the encoder engines serve (OpenSoraPlanT2V.features).
MODEL_INPUTS = ("video", "prompt", "latents", "prompt_embeds", "prompt_mask", "noise_seeds", "video_mask", "noise",
                "timesteps", "conditions")
# The predictor's modules before and after its blocks: on the first and the last pipeline stage.
PP_PRE = ("caption_projection", "pos_embed", "adaln_single", "rope")
PP_PRE_I2V = ("pos_embed_masked_hidden_states", "pos_embed_mask")
PP_POST = ("norm_out", "proj_out", "scale_shift_table")


@hookimpl
def default_config(task: str) -> dict:
    """The model.json / data.json sections of OpenSoraPlan 1.3 and the tiny embedded run."""
    return {
        "model": schema.MODEL,
        "data": schema.DATA,
        "training": TRAINING,
        "logging": {"tensorboard": False},
        "inference": schema.INFERENCE,
        "extract": schema.EXTRACT,
    }


@hookimpl
def model_provider(config: Config, runtime: Runtime) -> OpenSoraPlanT2V:
    """Build the model (on the CPU; the engines place it), checked against the data and the parallel layout.

    With ``model.ae.vae_cp_size`` its VAE encodes each clip split over that many ranks of the CP group.
    """
    check_encoder_engines(config.model, config.parallel)
    model = build_model(config.model)
    check_clips(config, model)
    size = config.model.ae.vae_cp_size
    if size > 1:
        model.vae_cp_group = vae_cp_group(runtime.submesh("cp").get_group(), size)
    parsed = parse_data(config)
    model.timestep_stratum = (runtime.dp_rank, runtime.dp_size)
    model.text_dropout = parsed.cfg
    model.text_len = text_len(config, parsed)
    if isinstance(model, OpenSoraPlanI2V):
        model.mask_type_ratio = parsed.mask_type_ratio
    return model


@hookimpl
def parallel_plan(model: OpenSoraPlanT2V, config: Config) -> ParallelPlan:
    """FSDP2 shards each block; CP splits the tokens entering the blocks; PP cuts the block list; TP splits each
    block's heads and FFN (``tp``).

    MindSpeed-MM's module paths in the fsdp2 patterns (``predictor.videodit_sparse_blocks.{*}``) name the blocks.
    CP splits the tokens before the first block and the RoPE tables (computed for the whole grid), and gathers
    after ``proj_out``. Under PP the first stage encodes, noises and embeds (``embed``), the last predicts. With
    the encoder engines on, FSDP2 leaves the frozen encoders whole: they encode in ``get_batch``.
    """
    i2v = isinstance(model, OpenSoraPlanI2V)
    pre = [*FROZEN, *(f"predictor.{name}" for name in (*PP_PRE, *(PP_PRE_I2V if i2v else ())))]
    return ParallelPlan(
        fsdp_modules=["predictor.transformer_blocks.{*}"],
        fsdp_ignored=fsdp_ignored(config.model, FROZEN),
        cp=ContextParallelPlan(
            split_inputs={"predictor.transformer_blocks.0": 1},
            split_outputs={"predictor.rope": 0},
            gather_outputs={"predictor.proj_out": 1},
            heads=model.predictor.config.num_attention_heads,
        ),
        pipeline=PipelinePlan(
            layers="predictor.transformer_blocks",
            pre=lambda model, batch: tuple(model.embed(**model_inputs(batch))),
            layer=lambda block, carry: tuple(run_block(block, carry)),
            post=lambda model, carry, batch: model.predict(Carry(*carry)),
            pre_modules=pre,
            post_modules=[f"predictor.{name}" for name in PP_POST],
            num_layers=config.model.predictor.pipeline_num_layers,
        ),
        tp=tensor_parallel_plan(model.predictor),
        module_aliases=MINDSPEED_MODULES,
    )


@hookimpl
def datasets_provider(config: Config, runtime: Runtime) -> tuple:
    """This rank's training dataloader; no validation or test split."""
    return build_train_loader(config, runtime), None, None


@hookimpl
def get_batch(data_iterator: DataIterator, runtime: Runtime, model: torch.nn.Module) -> dict:
    """The next batch on the device, with per-sample seeds from (training seed, epoch, index) of its items.

    With context parallelism only cp rank 0 reads it; the other ranks of its group receive it. With
    ``model.enable_encoder_dp`` or ``model.encoder_offload_interval`` it comes encoded (``encoder_engines``).
    """
    return engine_batch(data_iterator, runtime, model, lambda osp: FeatureEncoder(osp.features, osp.offloaded()))


def model_inputs(batch: dict) -> dict:
    """The batch entries the model takes."""
    return {key: batch[key] for key in MODEL_INPUTS if key in batch}


@hookimpl
def forward_step(batch: dict, model: torch.nn.Module, runtime: Runtime) -> dict:
    """Run the composite on the batch's clips and captions."""
    return model(**model_inputs(batch))


@hookimpl
def loss_func(output: dict, batch: dict, runtime: Runtime) -> tuple[torch.Tensor, dict]:
    """v1.3's loss: min-SNR-weighted squared error over the unpadded latents; counts latent tokens."""
    mask = output["loss_mask"] if output["loss_mask"].shape[1] else None
    loss = diffusion_loss(output["pred"], output["target"], output["weights"], mask)
    return loss, {"tokens": float(output["tokens"])}


@hookimpl
def after_training(config: Config, runtime: Runtime, checkpoint) -> None:
    """On rank 0, say where the checkpoint is and which ``mm infer`` command turns it into a video."""
    if runtime.is_main and checkpoint is not None:
        steps = " --steps 20" if flavor_name(config.model) == "tiny" else ""
        image = " --image first_frame.png" if config.model.task == "i2v" else ""
        print_infer_hint("opensoraplan1_3", runtime, checkpoint, example_prompt(config), image + steps)


@hookimpl
def extract_features(config: Config, runtime: Runtime) -> str:
    """``mm extract``: encode the data section's clips and captions once into a feature store."""
    return run_extraction(config, runtime)


@hookimpl
def inference(config: Config, runtime: Runtime) -> str:
    """``mm infer``: generate one video from the inference section's prompt (and image) and write it as mp4."""
    return generate(config, runtime)
