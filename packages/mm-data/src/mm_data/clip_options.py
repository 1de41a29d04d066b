"""How the shared video loader honours a data.json's frame and resize keys, and which of them it cannot honour.

MindSpeed-MM's video processors read these keys: ``frame_interval`` is the stride between sampled frames unless
``auto_interval`` (true by default) lets ``train_fps`` set it; ``skip_frame_num`` frames at a clip's start are never
sampled; ``speed_factor`` speeds a long clip up; ``cfg`` drops a caption (to "") with that probability, drawn
anew each epoch; with ``force_resolution: false`` each clip keeps its aspect, scaled to at most ``max_hxw`` pixels
and cropped to multiples of ``hw_stride`` (``min_hxw`` and ``hw_aspect_thr`` leave clips out). With
``drop_short_ratio`` below 1 a clip too short for ``num_frames`` is dropped with that probability (OpenSoraPlan's
video processor, which MindSpeed-MM's Wan2.1 files name) and otherwise read with the most frames it holds of
``4k + 1`` (Wan2.1's VAE stride, MindSpeed-MM's default ``vae_scale_factor``), at least ``min_num_frames`` (29 by
default): never padded. The keys of no meaning to mm come back in ``unused`` with why, for one warning line each.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mm_core.errors import ConfigError
from mm_data.dynamic_resolution import ClipPlanner
from mm_data.formats import DatasetParam
from mm_data.video import FrameSampling

DYNAMIC_SIZE_KEYS = ("max_hxw", "min_hxw", "hw_stride", "hw_aspect_thr")
# Keys the shared loader has no use for, with why (MindSpeed-MM's names for what mm does its own way).
NO_MEANING = {
    "data_storage_mode": "data_path is read as one index: a data.json, a .jsonl or a data.txt of folder,index lines",
    "video_processor_type": "mm decodes with decord (PyAV when missing) and samples frames itself",
    "video_reader_type": "mm decodes with decord (PyAV when missing) and samples frames itself",
    "image_reader_type": "mm decodes with decord (PyAV when missing) and samples frames itself",
    "train_pipeline": "mm resizes, center-crops and normalizes clips itself, as these transforms do",
    "use_text_processer": "captions are cleaned as the model's pipeline cleans them",
    "enable_text_preprocessing": "captions are cleaned as the model's pipeline cleans them",
    "text_preprocess_methods": "captions are cleaned as the model's pipeline cleans them",
    "model_max_length": "the prompt length comes from tokenizer_config or the model",
    "use_feature_data": "dataset_type 'feature' says whether the data are features",
    "use_img_from_vid": "joint image-video training is not offered",
    "use_img_num": "joint image-video training is not offered",
    "vid_img_fusion_by_splicing": "joint image-video training is not offered",
    "skip_define_frame_index": "MindSpeed-MM reads it nowhere",
}
# Every dataset_param key clip_options reads or names.
CLIP_KEYS = ("frame_interval", "auto_interval", "skip_frame_num", "speed_factor", "cfg", "force_resolution",
             *DYNAMIC_SIZE_KEYS, "min_num_frames", "drop_short_ratio", *NO_MEANING)
# MindSpeed-MM's OpensoraplanVideoProcessor defaults: the fewest frames of a kept short clip, and its frame step.
MIN_NUM_FRAMES = 29
SHORT_FRAME_STEP = 4
FIXED_SIZE = "force_resolution is true: clips are resized and center-cropped to max_height × max_width"
FPS_STRIDE = "auto_interval: train_fps sets the stride between frames"
INTERVAL_STRIDE = "auto_interval is false: frame_interval sets the stride between frames"
NO_PREPROCESSING = "enable_text_preprocessing is false: MindSpeed-MM drops captions only when it preprocesses them"
# MindSpeed-MM's cfg when a data.json leaves it out but has its text processer preprocess the captions.
PREPROCESSING_CFG = 0.1
FEATURES = "the data are extracted features: their clips were sampled and resized when they were encoded"


@dataclass(frozen=True)
class ClipOptions:
    """The frame sampling, caption dropout (``cfg``), share of short clips left out (``drop_short_ratio``) and
    (``force_resolution: false``) per-clip size planner a data.json asks for; ``unused`` lists the keys it gives
    that the shared loader cannot honour, as (key, why)."""

    sampling: FrameSampling
    planner: ClipPlanner | None = None
    unused: tuple[tuple[str, str], ...] = ()
    cfg: float = 0.0
    drop_short_ratio: float = 1.0

    def drops_short(self, seed: int, index: int) -> bool:
        """Whether clip ``index``, too short for ``num_frames``, is left out: drawn from the training seed and the
        index alone, the same in every process."""
        return random.Random(f"short {seed} {index}").random() < self.drop_short_ratio

    def drops_caption(self, seed: int, epoch: int, index: int) -> bool:
        """Whether sample ``index``'s caption is dropped in ``epoch``: drawn from the training seed, the epoch and
        the index alone, so every rank, loader worker and resumed run draws the same."""
        # A string seed is hashed with SHA-512: the same draw in every process (no PYTHONHASHSEED).
        return self.cfg > 0 and random.Random(f"cfg {seed} {epoch} {index}").random() < self.cfg


def _number(extra: Mapping[str, Any], key: str, default: float, low: float, kind: type = float) -> Any:
    value = extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)) \
            or value < low:
        expected = f"an integer of at least {low:g}" if kind is int else f"a number of at least {low:g}"
        raise ConfigError(f"data.dataset_param.{key} must be {expected}, got {value!r}")
    return kind(value)


def _optional_int(extra: Mapping[str, Any], key: str) -> int | None:
    return _number(extra, key, 1, 1, int) if extra.get(key) is not None else None


def _caption_dropout(extra: Mapping[str, Any], unused: list[tuple[str, str]]) -> float:
    """MindSpeed-MM's caption dropout: ``cfg`` (0.1 when its text processer preprocesses and no cfg is given),
    applied only when captions are preprocessed (``enable_text_preprocessing``, true by default)."""
    preprocessed = extra.get("enable_text_preprocessing", True) is not False
    default = PREPROCESSING_CFG if preprocessed and extra.get("use_text_processer") is True else 0.0
    cfg = _number(extra, "cfg", default, 0)
    if cfg > 1:
        raise ConfigError(f"data.dataset_param.cfg must be a probability in [0, 1], got {cfg!r}")
    if cfg > 0 and not preprocessed:
        unused.append(("cfg", NO_PREPROCESSING))
        return 0.0
    return cfg


def clip_options(param: DatasetParam) -> ClipOptions:
    """The options of ``param``'s frame and resize keys (a ConfigError naming a key of the wrong value)."""
    extra = param.extra
    if param.dataset_type == "feature":
        return ClipOptions(FrameSampling(param.num_frames), unused=tuple((key, FEATURES) for key in extra))
    unused = [(key, why) for key, why in NO_MEANING.items() if key in extra]
    by_stride = extra.get("auto_interval", True) is False or param.train_fps is None
    interval = _number(extra, "frame_interval", 1, 1) if by_stride else None
    if not by_stride and "frame_interval" in extra:
        unused.append(("frame_interval", FPS_STRIDE))
    if by_stride and param.train_fps is not None:
        unused.append(("train_fps", INTERVAL_STRIDE))
    drop_short_ratio = min(_number(extra, "drop_short_ratio", 1.0, 0), 1.0)
    min_num_frames = _number(extra, "min_num_frames", MIN_NUM_FRAMES, 1, int)
    sampling = FrameSampling(
        param.num_frames,
        None if by_stride else param.train_fps,
        interval,
        _number(extra, "skip_frame_num", 0, 0, int),
        _number(extra, "speed_factor", 1.0, 1),
        min(min_num_frames, param.num_frames) if drop_short_ratio < 1 else None,
        SHORT_FRAME_STEP,
    )
    cfg = _caption_dropout(extra, unused)
    planner = None
    if extra.get("force_resolution", True) is False:
        planner = ClipPlanner(
            num_frames=param.num_frames, min_num_frames=param.num_frames, max_height=param.max_height,
            max_width=param.max_width, max_hxw=_optional_int(extra, "max_hxw"), min_hxw=_optional_int(extra, "min_hxw"),
            hw_stride=_number(extra, "hw_stride", 32, 1, int), hw_aspect_thr=_number(extra, "hw_aspect_thr", 2.0, 1),
            force_resolution=False,
        )
    else:
        unused += [(key, FIXED_SIZE) for key in DYNAMIC_SIZE_KEYS if key in extra]
    return ClipOptions(sampling, planner, tuple(unused), cfg, drop_short_ratio)
