"""``mm extract`` for stepvideo: each clip's latents, both text features and, for TI2V, its first-frame condition."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mm_core.config import Config
from mm_core.runtime import Runtime
from mm_models_video import feature_extraction
from mm_models_video.flow_matching import noise_seeds
from mm_models_video.stepvideo import model_json
from mm_models_video.stepvideo.build import build_model
from mm_models_video.stepvideo.data import IMAGE_KEY, check_clip_fits, data_config, video_dataset


def extract_features(config: Config, runtime: Runtime) -> str:
    """Encode this rank's share of the videos into ``extract.output_dir``; rank 0 writes data.jsonl, data.json.

    The LLM embeddings are stored up to the prompt's end (training pads them back with their mask); the CLIP
    embeddings whole. TI2V's first frame is noised with the seed training would draw for the clip in epoch 0,
    so epoch 0 from features equals training on the videos.
    """

    def encoder() -> feature_extraction.Encode:
        model = build_model(model_json.with_data_tokenizers(config))
        check_clip_fits(config, model.predictor.config.patch_size)
        model = model.to(runtime.device).eval()
        llm_dtype, clip_dtype = model.text_encoder.llm.dtype, model.text_encoder.clip.dtype

        def encode(item: Mapping[str, Any]) -> dict[str, torch.Tensor]:
            video = item["video"].unsqueeze(0).to(runtime.device)
            latents = model.encode_video(video)
            text = model.encode_text([item["prompt"]])
            length = int(text["prompt_mask"][0].sum())
            out = {
                "latents": latents[0],
                # The encoders' outputs are cast up to float32: storing them in their own dtype loses nothing.
                "prompt_embeds": text["prompt_embeds"][0, :length].to(llm_dtype),
                "clip_embeds": text["clip_embeds"][0].to(clip_dtype),
            }
            if model.task == "i2v":
                seeds = noise_seeds(config.training.seed, [0], [item["index"]])
                out[IMAGE_KEY] = model.encode_image_condition(video, latents, seeds)[0]
            return out

        return encode

    return feature_extraction.extract_features(config, runtime, plugin="stepvideo", data_config=data_config,
                                               dataset=video_dataset, encoder=encoder)
