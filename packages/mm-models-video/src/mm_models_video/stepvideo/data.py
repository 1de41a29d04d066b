"""The stepvideo training data: captioned videos (data.json / the guide's data.jsonl) or extracted features."""

from __future__ import annotations

from torch.utils.data import DataLoader

from mm_core.config import Config
from mm_core.errors import ConfigError
from mm_core.runtime import Runtime
from mm_data.datasets import VideoTextDataset
from mm_data.formats import DataConfig
from mm_models_video import clip_shape
from mm_models_video import video_text_data as shared
from mm_models_video.data_section import parse_data_section
from mm_models_video.stepvideo import model_json
from mm_models_video.stepvideo.flavors import get_flavor
from mm_models_video.stepvideo.schema import check_model, flavor_name
from mm_models_video.stepvideo.vae import FRAME_LEN, SPATIAL_STRIDE
from mm_models_video.video_text_data import FEATURE_TYPE

# What the transformer reads from a feature sample; TI2V's first-frame condition is IMAGE_KEY.
FEATURE_KEYS = ("latents", "prompt_embeds", "clip_embeds")
IMAGE_KEY = "image_latents"
# MindSpeed-MM's stores list step_llm's then hunyuan_clip's embeddings; the reader names the second prompt_embeds_2.
MINDSPEED_NAMES = {"prompt_embeds_2": "clip_embeds"}


def data_config(config: Config) -> DataConfig:
    """The data section parsed as a data.json (once); clip shape defaults come from the flavor and task.

    The model section is checked first: the datasets open before the model is built.
    """
    flavor = check_model(config.model)
    clip = {"num_frames": flavor.num_frames[config.model.task], "max_height": flavor.height,
            "max_width": flavor.width}
    return parse_data_section(model_json.given(config.data), clip)


def check_clip(num_frames: int, height: int, width: int, patch_size: int, where: str) -> None:
    """A ConfigError naming ``where`` unless the clip is whole 17-frame chunks of sides a multiple of 16 × patch."""
    if num_frames < FRAME_LEN or num_frames % FRAME_LEN:
        raise ConfigError(f"{where}: num_frames {num_frames} must be a multiple of {FRAME_LEN} "
                          "(the Step-Video VAE encodes and decodes 17-frame chunks)")
    # One frame stands for the clip: the frame count is checked above, the sides here.
    clip_shape.check_clip(1, height, width, (1, SPATIAL_STRIDE * patch_size), where,
                          "for Step-Video (VAE stride 16 × patch size)")


def check_clip_fits(config: Config, patch_size: int) -> None:
    """A ConfigError unless the data section's clips fit the model (features were encoded already)."""
    param = data_config(config).dataset_param
    if param.dataset_type != FEATURE_TYPE:
        check_clip(param.num_frames, param.max_height, param.max_width, patch_size, "data.dataset_param")
        if float(param.extra.get("drop_short_ratio", 1.0)) < 1:
            raise ConfigError(f"data.dataset_param.drop_short_ratio {param.extra['drop_short_ratio']} keeps clips "
                              f"shorter than num_frames, which need not be whole {FRAME_LEN}-frame chunks (the "
                              "Step-Video VAE encodes only those): keep it at 1")


def video_dataset(config: Config, data: DataConfig) -> VideoTextDataset:
    """The raw video-caption dataset the data section names (generated when it names none)."""
    return shared.video_dataset(config, data, get_flavor(flavor_name(config.model)).fps)


def check_features(config: Config, data: DataConfig) -> None:
    """A ConfigError unless the feature store holds what the task trains on (TI2V: the first-frame condition)."""
    path = data.dataset_param.data_path
    keys = shared.stored_keys(data, MINDSPEED_NAMES)
    wanted = [*FEATURE_KEYS, IMAGE_KEY] if config.model.task == "i2v" else list(FEATURE_KEYS)
    missing = [key for key in wanted if keys and key not in keys]
    if missing:
        hint = " (extract with model.task=i2v)" if missing == [IMAGE_KEY] else ""
        raise ConfigError(f"data.dataset_param.data_path: the features in {path} hold no {', '.join(missing)}, "
                          f"which model.task={config.model.task} trains on{hint}")


def build_train_loader(config: Config, runtime: Runtime) -> DataLoader:
    """This rank's resumable dataloader over videos or features, per the data section; items carry their epoch.

    Features hold the LLM embeddings trimmed: they are zero-padded to ``llm_len`` with their mask. A MindSpeed-MM
    store's hunyuan_clip embeddings are its second text entry, kept whole (the transformer attends to all of them).
    """
    flavor = get_flavor(flavor_name(config.model))
    llm_len = model_json.with_data_tokenizers(config).tokenizer.llm.model_max_length or flavor.llm_len
    data = data_config(config)
    if data.dataset_param.dataset_type == FEATURE_TYPE:
        check_features(config, data)
    return shared.build_video_text_loader(
        config, runtime, data, flavor.fps,
        lambda: shared.FeatureCollate(llm_len, mask_key="prompt_mask", float_keys=("prompt_embeds", "clip_embeds"),
                                      renames=MINDSPEED_NAMES),
    )


def example_prompt(config: Config) -> str:
    """A caption from the training data (the configured inference prompt when there is none), for a first sample."""
    return shared.example_prompt(config, data_config(config), get_flavor(flavor_name(config.model)).fps)
