"""``mm extract`` for wan2_1: encode each clip and caption once into latents and prompt embeddings (I2V: also the
first frame's CLIP tokens and conditioning latents)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mm_core.config import Config
from mm_core.runtime import Runtime
from mm_models_video import feature_extraction
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.data import CONDITION_KEY, IMAGE_KEY, check_clip_fits, data_config, video_dataset
from mm_models_video.wan2_1.i2v import WanI2V


def extract_features(config: Config, runtime: Runtime) -> str:
    """Encode this rank's share of the videos into ``extract.output_dir``; rank 0 writes data.jsonl, data.json."""

    def encoder() -> feature_extraction.Encode:
        model = build_model(config.model)
        check_clip_fits(config, model)
        model = model.to(runtime.device).eval()

        def encode(item: Mapping[str, Any]) -> dict[str, torch.Tensor]:
            latents = model.encode_video(item["video"].unsqueeze(0).to(runtime.device))[0]
            length = int(model.tokenize([item["prompt"]])[1].sum())
            embeds = model.encode_text([item["prompt"]])[0, :length].to(model.text_encoder.dtype)
            features = {"latents": latents, "prompt_embeds": embeds}
            if isinstance(model, WanI2V):
                video = item["video"].unsqueeze(0).to(runtime.device)
                image = model.encode_image(video[:, :, 0])[0].to(model.image_encoder.dtype)
                condition = model.condition_latents(video[:, :, 0], video.shape[2])[0]
                features.update({IMAGE_KEY: image, CONDITION_KEY: condition})
            return features

        return encode

    return feature_extraction.extract_features(config, runtime, plugin="wan2_1", data_config=data_config,
                                               dataset=video_dataset, encoder=encoder)
