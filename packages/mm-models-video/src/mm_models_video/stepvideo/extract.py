"""``mm extract`` for stepvideo: each clip's latents, both text features and, for TI2V, its first-frame condition, in
mm's names or MindSpeed-MM's (``extract.layout``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mm_core.config import Config
from mm_core.runtime import Runtime
from mm_models_video import feature_extraction
from mm_models_video.feature_extraction import MINDSPEED_LAYOUT, dtype_of, mindspeed_sample
from mm_models_video.flow_matching import noise_seeds
from mm_models_video.stepvideo import model_json
from mm_models_video.stepvideo.build import build_model
from mm_models_video.stepvideo.data import IMAGE_KEY, check_clip_fits, data_config, video_dataset


def extract_features(config: Config, runtime: Runtime) -> str:
    """Encode this rank's share of the videos into ``extract.output_dir``; rank 0 writes data.jsonl, data.json.

    mm's layout stores the LLM embeddings up to the prompt's end (training pads them back with their mask) and the
    CLIP embeddings whole; MindSpeed-MM's stores both padded, with their masks, as a list per key, in the encoders'
    dtypes. A sampled VAE posterior and TI2V's noised first frame are drawn from the seed training would draw for
    the clip in epoch 0, so epoch 0 from features equals training on the videos.
    """

    def encoder(layout: str) -> feature_extraction.Encode:
        model = build_model(model_json.with_data_tokenizers(config))
        check_clip_fits(config, model.predictor.config.patch_size)
        model = model.to(runtime.device).eval()
        llm_dtype, clip_dtype = model.text_encoder.llm.dtype, model.text_encoder.clip.dtype

        def encode(item: Mapping[str, Any]) -> dict[str, Any]:
            video = item["video"].unsqueeze(0).to(runtime.device)
            seeds = noise_seeds(config.training.seed, [0], [item["index"]])
            latents = model.encode_video(video, seeds=seeds)
            text = model.encode_text([item["prompt"]])
            # The encoders' outputs are cast up to float32: storing them in their own dtype loses nothing.
            llm, clip = text["prompt_embeds"][0].to(llm_dtype), text["clip_embeds"][0].to(clip_dtype)
            i2v = {}
            if model.task == "i2v":
                i2v[IMAGE_KEY] = model.encode_image_condition(video, latents, seeds)[0]
            if layout != MINDSPEED_LAYOUT:
                length = int(text["prompt_mask"][0].sum())
                return {"latents": latents[0], "prompt_embeds": llm[:length], "clip_embeds": clip, **i2v}
            vae = dtype_of(model.ae)
            texts = [(llm, text["prompt_mask"][0]), (clip, text["clip_mask"][0])]
            return mindspeed_sample(latents[0].to(vae), texts, **{k: v.to(vae) for k, v in i2v.items()})

        return encode

    return feature_extraction.extract_features(config, runtime, plugin="stepvideo", data_config=data_config,
                                               dataset=video_dataset, encoder=encoder)
