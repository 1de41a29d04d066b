"""Build a CustomModel from the model section: the shared Wan VAE and UMT5 builders, a CustomDiT, flow matching."""

from __future__ import annotations

from mm_core.config import Config
from mm_core.dtypes import parse_dtype
from mm_core.errors import ConfigError
from mm_models_video.custom_dit.dit import CustomDiT
from mm_models_video.custom_dit.model import CustomModel
from mm_models_video.custom_dit.schema import check_model
from mm_models_video.encoders import TINY_UMT5, TINY_VAE, build_text_encoder, build_vae
from mm_models_video.flow_matching import FlowMatching

# The frozen parts' dtype when model.json gives none.
DEFAULT_DTYPE = "fp32"


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
    """The CustomModel the model section describes; parts without from_pretrained are Wan2.1's tiny VAE and UMT5.

    The predictor must fit the VAE's and UMT5's widths.
    """
    check_model(model)
    ae = build_vae(
        model.ae, model.ae.from_pretrained, parse_dtype(model.ae.dtype or DEFAULT_DTYPE, "model.ae.dtype"), TINY_VAE
    )
    text_dtype = parse_dtype(model.text_encoder.dtype or DEFAULT_DTYPE, "model.text_encoder.dtype")
    text_encoder = build_text_encoder(model.text_encoder.from_pretrained, text_dtype, TINY_UMT5)
    predictor = model.predictor
    _check_fits("in_channels", predictor.in_channels, "VAE's z_dim", ae.config.z_dim)
    _check_fits("out_channels", predictor.out_channels, "VAE's z_dim", ae.config.z_dim)
    _check_fits("text_dim", predictor.text_dim, "text encoder's d_model", text_encoder.config.d_model)
    return CustomModel(
        ae=ae,
        text_encoder=text_encoder,
        predictor=build_predictor(predictor),
        diffusion=FlowMatching.from_config(model.diffusion),
        norm_latents=model.ae.norm_latents,
        do_sample=model.ae.do_sample,
        external=[part for part in ("ae", "text_encoder") if model[part].from_pretrained],
    )
