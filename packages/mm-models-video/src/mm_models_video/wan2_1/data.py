"""The wan2_1 training data: raw captioned videos (the seeds' data.json) or extracted features, as dataloaders."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torch.utils.data import DataLoader

from mm_core.config import Config
from mm_core.errors import ConfigError
from mm_core.runtime import Runtime
from mm_data.datasets import VideoTextDataset
from mm_data.features import is_mindspeed_index, read_feature_index
from mm_data.formats import DataConfig
from mm_models_video import video_text_data as shared
from mm_models_video.data_section import parse_data_section
from mm_models_video.video_text_data import FEATURE_TYPE
from mm_models_video.wan2_1.flavors import get_flavor
from mm_models_video.wan2_1.model import WanT2V
from mm_models_video.wan2_1.schema import check_clip

# What a feature sample holds: the clip's latents and the caption's embeddings; I2V adds the first frame's CLIP tokens
# and conditioning latents (mask + first-frame latents), under the names WanI2V takes them.
FEATURE_KEYS = ("latents", "prompt_embeds")
IMAGE_KEY, CONDITION_KEY = "image_embeds", "condition"


def data_config(config: Config) -> DataConfig:
    """The data section parsed as a data.json (once); clip shape defaults come from the model flavor."""
    flavor = get_flavor(config.model.flavor)
    height, width = flavor.clip_size(config.model.task)
    clip = {"num_frames": flavor.clip_frames(config.model.task), "max_height": height, "max_width": width}
    return parse_data_section(config.data, clip)


def check_clip_fits(config: Config, model: WanT2V) -> None:
    """A ConfigError unless the data section's clips fit the built model (features were encoded already)."""
    param = data_config(config).dataset_param
    if param.dataset_type != FEATURE_TYPE:
        shape = param.num_frames, param.max_height, param.max_width
        check_clip(model, config.model.flavor, *shape, "data.dataset_param")


def extraction_text_len(config: Config, model_text_len: int) -> int:
    """The token length ``mm extract`` encodes prompts to: data.json's ``tokenizer_config.model_max_length`` (the
    length MindSpeed-MM's feature extraction pads them to), else the model's ``text_len``."""
    tokenizer = data_config(config).dataset_param.tokenizer_config
    entries = tokenizer if isinstance(tokenizer, list) else [tokenizer]
    lengths = [entry.get("model_max_length") for entry in entries if isinstance(entry, dict)]
    given = next((length for length in lengths if length is not None), None)
    if given is not None and (not isinstance(given, int) or isinstance(given, bool) or given < 1):
        raise ConfigError(f"data.dataset_param.tokenizer_config.model_max_length must be a positive integer, "
                          f"got {given!r}")
    return given or model_text_len


def video_dataset(config: Config, data: DataConfig) -> VideoTextDataset:
    """The raw video-caption dataset the data section names (generated when it names none)."""
    return shared.video_dataset(config, data, get_flavor(config.model.flavor).fps)


def check_features(config: Config, data: DataConfig) -> None:
    """A ConfigError unless the feature store holds what the task trains on (I2V: the first frame's features)."""
    path = data.dataset_param.data_path
    entries = read_feature_index(path)
    if is_mindspeed_index(entries):
        return  # MindSpeed-MM's per-sample files name their tensors inside; they are read as they come
    wanted = [*FEATURE_KEYS, IMAGE_KEY, CONDITION_KEY] if config.model.task == "i2v" else list(FEATURE_KEYS)
    missing = [key for key in wanted if entries and key not in entries[0]["keys"]]
    if missing:
        hint = " (extract them with model.task=i2v)" if set(missing) <= {IMAGE_KEY, CONDITION_KEY} else ""
        raise ConfigError(f"data.dataset_param.data_path: the features in {path} hold no {', '.join(missing)}, "
                          f"which model.task={config.model.task} trains on{hint}")


def build_train_loader(config: Config, runtime: Runtime) -> DataLoader:
    """This rank's resumable dataloader over videos or features, per the data section; items carry their epoch."""
    if data_config(config).dataset_param.dataset_type == FEATURE_TYPE:
        check_features(config, data_config(config))
    text_len = config.model.predictor.text_len or get_flavor(config.model.flavor).text_len
    return shared.build_video_text_loader(config, runtime, data_config(config), get_flavor(config.model.flavor).fps,
                                          lambda: shared.FeatureCollate(text_len))


def example_prompt(config: Config) -> str:
    """A caption from the training data (the configured inference prompt when there is none), for a first sample."""
    return shared.example_prompt(config, data_config(config), get_flavor(config.model.flavor).fps)


def write_example_image(config: Config, path: Path) -> Path | None:
    """Write the first frame of the first training clip as an image at ``path`` (None when training on features)."""
    data = data_config(config)
    if data.dataset_param.dataset_type == FEATURE_TYPE:
        return None
    frame = video_dataset(config, data).load(0)["video"][:, 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame.permute(1, 2, 0).numpy()).save(path)
    return path
