"""``mm extract`` for opensoraplan1_3: each planned clip's latents, its caption's mT5 states and, for I2V, its
conditions, in mm's names or MindSpeed-MM's (``extract.layout``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mm_core.config import Config
from mm_core.runtime import Runtime
from mm_models_video import feature_extraction
from mm_models_video.feature_extraction import MINDSPEED_LAYOUT, dtype_of, mindspeed_sample
from mm_models_video.flow_matching import noise_seeds
from mm_models_video.opensoraplan1_3.build import build_model
from mm_models_video.opensoraplan1_3.data import (
    CONDITIONS_KEY,
    MINDSPEED_CONDITIONS,
    build_dataset,
    check_clips,
    parse_data,
    text_len,
)
from mm_models_video.opensoraplan1_3.inpaint import OpenSoraPlanI2V


def extract_features(config: Config, runtime: Runtime) -> str:
    """Encode this rank's share of the planned clips into ``extract.output_dir``; rank 0 writes data.jsonl, data.json.

    Each clip draws from the generator training seeds for it in epoch 0, in training's order: the VAE posterior
    sample, then the caption dropout (data.json's ``cfg``: the empty caption's states are stored, as MindSpeed-MM's
    extraction tokenizes the dropped caption; training from features drops none), and for I2V the mask type, mask
    and masked clip's sample from the conditions' stream. mm's layout stores the states up to the caption's end and
    I2V's ``conditions``; MindSpeed-MM's stores them padded with their mask, and I2V's ``masked_video`` latents and
    compressed ``input_mask``, in the encoders' dtypes.
    """
    parsed = parse_data(config)

    def encoder(layout: str) -> feature_extraction.Encode:
        model = build_model(config.model)
        check_clips(config, model)
        model = model.to(runtime.device).eval()
        model.text_len = text_len(config, parsed)
        model.text_dropout = parsed.cfg
        if isinstance(model, OpenSoraPlanI2V):
            model.mask_type_ratio = parsed.mask_type_ratio

        @torch.no_grad()
        def encode(item: Mapping[str, Any]) -> dict[str, Any]:
            video = item["video"].unsqueeze(0).to(runtime.device)
            seeds = noise_seeds(config.training.seed, [0], [item["index"]])
            generators = [torch.Generator(runtime.device).manual_seed(seed) for seed in seeds]
            latents = model.encode_video(video, generators)[0]
            embeds, mask = model.encode_text(model.drop_captions([item["prompt"]], generators))
            embeds, mask = embeds[0].to(model.text_encoder.dtype), mask[0]
            i2v = {}
            if isinstance(model, OpenSoraPlanI2V):
                i2v[CONDITIONS_KEY] = model.sample_conditions(video, seeds)[0]
            if layout != MINDSPEED_LAYOUT:
                return {"latents": latents, "prompt_embeds": embeds[: int(mask.sum())], **i2v}
            vae = dtype_of(model.ae)
            parts = {}
            if i2v:
                masked, input_mask = i2v[CONDITIONS_KEY].split([latents.shape[0], model.vae_strides[0]])
                parts = dict(zip(MINDSPEED_CONDITIONS, (masked.to(vae), input_mask.to(vae))))
            return mindspeed_sample(latents.to(vae), [(embeds, mask)], **parts)

        return encode

    return feature_extraction.extract_features(
        config, runtime, plugin="opensoraplan1_3", data_config=lambda c: parse_data(c).data,
        dataset=lambda c, _data: build_dataset(c, parse_data(c)), encoder=encoder,
    )
