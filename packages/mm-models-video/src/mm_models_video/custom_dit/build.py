"""Build a CustomModel from the model section, reusing wan2_1's builders for the Wan VAE and UMT5."""

from __future__ import annotations

from diffusers import AutoencoderKLWan
from transformers import UMT5Config, UMT5EncoderModel

from mm_core.config import Config
from mm_core.errors import ConfigError
from mm_models_video.custom_dit.dit import CustomDiT
from mm_models_video.custom_dit.model import CustomModel
from mm_models_video.custom_dit.schema import check_model
from mm_models_video.wan2_1.build import fixed_init, load_pretrained
from mm_models_video.wan2_1.diffusion import FlowMatching
from mm_models_video.wan2_1.flavors import get_flavor
from mm_models_video.wan2_1.schema import dtype_of

# Parts without pretrained weights are Wan2.1's tiny VAE and UMT5 (fixed-seed random weights).
TINY = get_flavor("tiny")


def build_ae(ae: Config) -> AutoencoderKLWan:
    """The Wan VAE from ``ae.from_pretrained`` (a diffusers vae/ folder), else the tiny one."""
    dtype = dtype_of(ae.dtype, TINY, "model.ae.dtype")
    if ae.from_pretrained:
        vae = load_pretrained(AutoencoderKLWan, ae.from_pretrained, "model.ae.from_pretrained", torch_dtype=dtype)
    else:
        vae = fixed_init(lambda: AutoencoderKLWan(**TINY.ae), dtype)
    if ae.enable_tiling:
        vae.enable_tiling(**{k: v for k, v in ae.tiling_param.items() if v is not None})
    return vae


def build_text_encoder(text_encoder: Config) -> UMT5EncoderModel:
    """UMT5 from ``text_encoder.from_pretrained`` (a transformers folder), else the tiny one."""
    dtype = dtype_of(text_encoder.dtype, TINY, "model.text_encoder.dtype")
    if text_encoder.from_pretrained:
        return load_pretrained(
            UMT5EncoderModel, text_encoder.from_pretrained, "model.text_encoder.from_pretrained", dtype=dtype
        )
    return fixed_init(lambda: UMT5EncoderModel(UMT5Config(**TINY.text_encoder)), dtype)


def build_predictor(predictor: Config) -> CustomDiT:
    """The CustomDiT the predictor keys describe, in float32 (mixed precision comes from the engines)."""
    kwargs = {k: v for k, v in predictor.items() if k != "model_id"}
    if kwargs["head_dim"] % 2:
        raise ConfigError(f"model.predictor.head_dim must be even (rotary embedding), got {kwargs['head_dim']}")
    return CustomDiT(**kwargs)


def _check_fits(name: str, predictor_value: int, part: str, part_value: int) -> None:
    if predictor_value != part_value:
        raise ConfigError(
            f"model.predictor.{name} is {predictor_value} but the {part} gives {part_value}: set it to {part_value}"
        )


def build_model(model: Config) -> CustomModel:
    """The CustomModel the model section describes; the predictor must fit the VAE's and UMT5's widths."""
    check_model(model)
    ae = build_ae(model.ae)
    text_encoder = build_text_encoder(model.text_encoder)
    predictor = model.predictor
    _check_fits("in_channels", predictor.in_channels, "VAE's z_dim", ae.config.z_dim)
    _check_fits("out_channels", predictor.out_channels, "VAE's z_dim", ae.config.z_dim)
    _check_fits("text_dim", predictor.text_dim, "text encoder's d_model", text_encoder.config.d_model)
    diffusion = model.diffusion
    external = [part for part in ("ae", "text_encoder") if model[part].from_pretrained]
    return CustomModel(
        ae=ae,
        text_encoder=text_encoder,
        predictor=build_predictor(predictor),
        diffusion=FlowMatching(
            diffusion.num_train_timesteps, float(diffusion.shift), float(diffusion.sigma_min), diffusion.extra_one_step
        ),
        norm_latents=model.ae.norm_latents,
        do_sample=model.ae.do_sample,
        external=external,
    )
