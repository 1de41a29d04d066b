"""``mm extract`` for wan2_1: encode each clip and caption once into latents and prompt embeddings (I2V: also the
first frame's CLIP tokens and conditioning latents), in mm's names or MindSpeed-MM's (``extract.layout``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mm_core.config import Config
from mm_core.runtime import Runtime
from mm_models_video import feature_extraction
from mm_models_video.feature_extraction import MINDSPEED_LAYOUT, dtype_of, mindspeed_sample
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.data import (
    CONDITION_KEY,
    IMAGE_KEY,
    check_clip_fits,
    data_config,
    extraction_text_len,
    video_dataset,
)
from mm_models_video.wan2_1.i2v import WanI2V


def extract_features(config: Config, runtime: Runtime) -> str:
    """Encode this rank's share of the videos into ``extract.output_dir``; rank 0 writes data.jsonl, data.json.

    Prompts are tokenized to data.json's ``tokenizer_config.model_max_length`` when it gives one (as MindSpeed-MM's
    feature extraction does), else to the model's text length. mm's layout stores each prompt's embeddings up to its
    end; MindSpeed-MM's stores them padded with their mask, each tensor in its encoder's dtype.
    """

    def encoder(layout: str) -> feature_extraction.Encode:
        model = build_model(config.model)
        check_clip_fits(config, model)
        model = model.to(runtime.device).eval()
        model.text_len = extraction_text_len(config, model.text_len)

        def encode(item: Mapping[str, Any]) -> dict[str, Any]:
            video = item["video"].unsqueeze(0).to(runtime.device)
            latents = model.encode_video(video)[0]
            mask = model.tokenize([item["prompt"]])[1][0]
            embeds = model.encode_text([item["prompt"]])[0].to(model.text_encoder.dtype)
            i2v = {}
            if isinstance(model, WanI2V):
                i2v = {IMAGE_KEY: model.encode_image(video[:, :, 0])[0].to(model.image_encoder.dtype),
                       CONDITION_KEY: model.condition_latents(video[:, :, 0], video.shape[2])[0]}
            if layout != MINDSPEED_LAYOUT:
                return {"latents": latents, "prompt_embeds": embeds[: int(mask.sum())], **i2v}
            vae = dtype_of(model.ae)
            extra = {"i2v_clip_feature": i2v[IMAGE_KEY], "i2v_vae_feature": i2v[CONDITION_KEY].to(vae)} if i2v else {}
            return mindspeed_sample(latents.to(vae), [(embeds, mask)], **extra)

        return encode

    return feature_extraction.extract_features(config, runtime, plugin="wan2_1", data_config=data_config,
                                               dataset=video_dataset, encoder=encoder)
