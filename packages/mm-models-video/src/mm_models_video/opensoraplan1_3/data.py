"""The opensoraplan1_3 training data: the seeds' data_static_resolution.json / data_dynamic_resolution.json.

``data_path`` is a data.txt of ``root,annotation.json`` lines (or one annotation file). Every clip is planned from
its annotation (``mm_data.dynamic_resolution``), and the loader's buckets keep one shape per micro-batch: the
whole (frames, height, width) with ``group_data`` (MindSpeed-MM's LengthGroupedSampler), else what
``group_frame`` / ``group_resolution`` ask. Unlike MindSpeed-MM's sampler the order is reshuffled each epoch, and
resumable.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mm_core.config import Config, warn_unused
from mm_core.errors import ConfigError, DataError
from mm_core.runtime import Runtime
from mm_data.annotations import AnnotatedClip, read_annotations
from mm_data.bad_samples import BadSamples
from mm_data.clip_options import clip_options
from mm_data.datasets import collate
from mm_data.dynamic_resolution import ClipPlanner
from mm_data.features import feature_prompts, open_feature_store
from mm_data.formats import DataConfig, DatasetParam, parse_data_config
from mm_data.sampler import bucket_keys, build_rank_loader
from mm_data.video import FrameSampling, read_video
from mm_models_video import clip_shape
from mm_models_video.captions import clean_caption
from mm_models_video.opensoraplan1_3.flavors import model_flavor
from mm_models_video.opensoraplan1_3.inpaint import MASK_TYPES
from mm_models_video.opensoraplan1_3.model import OpenSoraPlanT2V
from mm_models_video.synthetic import with_synthetic_data
from mm_models_video.video_text_data import FEATURE_TYPE, FeatureCollate, stored_keys

# dataset_param keys of the seeds' OpenSoraPlan files that mm_data.formats does not know; read here.
OWN_KEYS = ("vae_scale_factor", "seed", "use_aesthetic", "mask_type_ratio_dict_video", "train_pipeline_after_resize")
NESTED = ("basic_parameters", "preprocess_parameters")
LOW_AESTHETIC, HIGH_AESTHETIC = 4.25, 5.75
STRIDE_KEYS = ("frame_interval", "train_fps")
# I2V features: mm's store holds the conditions the transformer takes; MindSpeed-MM's, their two parts.
CONDITIONS_KEY = "conditions"
MINDSPEED_CONDITIONS = ("masked_video", "input_mask")


@dataclass(frozen=True)
class OpenSoraData:
    """The data section: the generic blocks, the clip planner, caption dropout and the OpenSoraPlan keys."""

    data: DataConfig
    planner: ClipPlanner
    cfg: float
    use_aesthetic: bool
    mask_type_ratio: Mapping[str, float]
    drop_short_ratio: float = 0.0
    vae_strides: tuple[int, int] = (4, 8)
    clean_captions: bool = False


def _split_own_keys(dataset_param: Mapping[str, Any]) -> tuple[dict, dict]:
    flat, own = {}, {}
    for key, value in dataset_param.items():
        items = value.items() if key in NESTED and isinstance(value, Mapping) else [(key, value)]
        for name, item in items:
            (own if name in OWN_KEYS else flat)[name] = item
    return flat, own


def _given(raw: Any) -> Any:
    """``raw`` without its None values: a data.json key at None (the schema's default) is not given."""
    if not isinstance(raw, dict):
        return raw
    return {key: _given(value) for key, value in raw.items() if value is not None}


def frame_sampling(param: DatasetParam) -> FrameSampling:
    """``auto_interval`` / ``frame_interval`` / ``skip_frame_num`` read as the shared loader reads them; the stride
    key that does not apply (``frame_interval`` under auto_interval, else ``train_fps``) is warned once."""
    options = clip_options(param)
    _warn_stride(repr(param), tuple((key, why) for key, why in options.unused if key in STRIDE_KEYS))
    return options.sampling


@functools.lru_cache(maxsize=8)
def _warn_stride(param: str, unused: tuple[tuple[str, str], ...]) -> None:
    """Warn once per data section (``param``, its repr)."""
    warn_unused([(f"data.dataset_param.{key}", why) for key, why in unused], "data section")


def parse_data(config: Config) -> OpenSoraData:
    """The data section parsed (the flavor's clip shape filling its gaps); a wrong key or value is a ConfigError."""
    flavor = model_flavor(config.model)
    raw = _given(json.loads(json.dumps(config.data, default=str)))
    flat, own = _split_own_keys(raw.get("dataset_param", {}))
    clip = {"num_frames": flavor.num_frames, "max_height": flavor.height, "max_width": flavor.width}
    data = parse_data_config({**raw, "dataset_param": {**clip, **flat}}, "data")
    param, extra = data.dataset_param, data.dataset_param.extra
    if "dataset_type" not in flat:
        data = replace(data, dataset_param=replace(param, dataset_type=config.model.task))
        param = data.dataset_param
    if param.dataset_type not in (config.model.task, FEATURE_TYPE):
        raise ConfigError(
            f"data.dataset_param.dataset_type {param.dataset_type!r} does not match model.task {config.model.task!r}"
        )
    vae_scale = own.get("vae_scale_factor", [4, 8, 8])
    if vae_scale != [4, 8, 8]:
        raise ConfigError(f"data.dataset_param.vae_scale_factor must be [4, 8, 8] (WF-VAE's), got {vae_scale!r}")
    sampling = frame_sampling(param)
    planner = ClipPlanner(
        num_frames=param.num_frames,
        min_num_frames=int(extra.get("min_num_frames", param.num_frames)),
        max_height=param.max_height,
        max_width=param.max_width,
        max_hxw=extra.get("max_hxw"),
        min_hxw=extra.get("min_hxw"),
        hw_stride=int(extra.get("hw_stride", 32)),
        hw_aspect_thr=float(extra.get("hw_aspect_thr", 2.0)),
        force_resolution=bool(extra.get("force_resolution", True)),
        train_fps=param.train_fps,
        vae_stride_t=vae_scale[0],
        latent_frame_multiple=int(config.model.max_cp_size or 1),
        speed_factor=float(extra.get("speed_factor", 1.0)),
        frame_interval=sampling.interval,
        skip_frame_num=sampling.skip,
    )
    ratio = own.get("mask_type_ratio_dict_video", {"i2v": 1.0})
    if not isinstance(ratio, Mapping) or not ratio or not set(ratio) <= set(MASK_TYPES):
        raise ConfigError(
            f"data.dataset_param.mask_type_ratio_dict_video must map mask types ({', '.join(MASK_TYPES)}) to "
            f"weights, got {ratio!r}"
        )
    # MindSpeed-MM's TextProcesser cleans captions (enable_text_preprocessing, default true) when it is used.
    clean = bool(extra.get("use_text_processer", False)) and bool(extra.get("enable_text_preprocessing", True))
    return OpenSoraData(data, planner, float(extra.get("cfg", 0.0)), bool(own.get("use_aesthetic", False)),
                        dict(ratio), float(extra.get("drop_short_ratio", 0.0)), (vae_scale[0], vae_scale[1]), clean)


def check_clips(config: Config, model: OpenSoraPlanT2V) -> None:
    """A ConfigError unless the data section's clip sizes fit the VAE strides × patch size."""
    planner = parse_data(config).planner
    patch = model.predictor.config.patch_size
    factors = clip_shape.clip_factors(model.vae_strides, (1, patch, patch))
    why = "for OpenSoraPlan 1.3 (VAE stride × patch size)"
    if planner.force_resolution:
        clip_shape.check_clip(planner.num_frames, planner.max_height, planner.max_width, factors, "data.dataset_param",
                              why)
    elif planner.hw_stride % factors[1]:
        raise ConfigError(f"data.dataset_param.hw_stride {planner.hw_stride} must be a multiple of {factors[1]} {why}")


def aesthetic_caption(caption: str, aes: float | None, generator: torch.Generator) -> str:
    """The caption with a note on the clip's aesthetic score (low ≤ 4.25, high ≥ 5.75), before or after it."""
    if aes is None or LOW_AESTHETIC < aes < HIGH_AESTHETIC:
        return caption
    note = "This video has low aesthetic quality." if aes <= LOW_AESTHETIC else "This video has high aesthetic quality."
    return f"{caption} {note}" if torch.rand((), generator=generator) < 0.5 else f"{note} {caption}"


class PlannedClipDataset(Dataset):
    """Map-style dataset of {"video": uint8 [C, T, H, W], "prompt": str, "index": int} at each clip's planned shape.

    With ``clean_captions`` each caption (its aesthetic note included) goes through :func:`clean_caption`.
    Clips the planner leaves out are dropped when the dataset is built, and each clip planned shorter than
    ``num_frames`` with probability ``drop_short_ratio`` (drawn from ``seed``). A clip that turns out unreadable
    is skipped (counted) or raised as ``on_bad_sample`` says; it is replaced by the next readable clip of the same
    shape, so a batch keeps one shape.
    """

    def __init__(self, clips: Sequence[AnnotatedClip], planner: ClipPlanner, use_aesthetic: bool = False,
                 on_bad_sample: str = "skip", seed: int = 0, drop_short_ratio: float = 0.0,
                 clean_captions: bool = False) -> None:
        self.planner = planner
        self.use_aesthetic = use_aesthetic
        self.clean_captions = clean_captions
        self.seed = seed
        self.bad = BadSamples(on_bad_sample)
        generator = torch.Generator().manual_seed(seed)
        self.clips, self.plan = [], []
        for clip in clips:
            shape = planner.plan(clip.num_frames, clip.fps, clip.height, clip.width)
            if shape is None or clip.caption is None:
                continue
            if shape[0] < planner.num_frames and torch.rand((), generator=generator) < drop_short_ratio:
                continue
            self.clips.append(clip)
            self.plan.append(shape)
        if not self.clips:
            raise DataError(
                f"none of the {len(clips)} annotated clips fits the data section (caption, resolution, num_frames "
                f"and fps known; at least min_num_frames {planner.min_num_frames} frames at train_fps; size and aspect)"
            )

    def __len__(self) -> int:
        return len(self.clips)

    def shapes(self) -> list[tuple[int, int, int]]:
        """Each clip's planned (frames, height, width)."""
        return list(self.plan)

    @property
    def records(self) -> list[AnnotatedClip]:
        """The clips kept, by index (feature extraction names each sample after its ``path``)."""
        return self.clips

    def load(self, index: int) -> dict[str, Any]:
        """Clip ``index`` at its planned shape, or DataError when it cannot be read."""
        clip, (frames, height, width) = self.clips[index], self.plan[index]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        sampling = self.planner.sampling(frames, clip.num_frames, clip.fps)
        video = read_video(clip.path, frames, generator=generator, sampling=sampling)
        try:
            video = self.planner.resize(video, height, width)
        except ValueError as exc:
            raise DataError(f"sample {index} ({clip.path}): {exc}") from None
        caption = aesthetic_caption(clip.caption, clip.aes, generator) if self.use_aesthetic else clip.caption
        if self.clean_captions:
            caption = clean_caption(caption)
        return {"video": video, "prompt": caption, "index": index}

    def __getitem__(self, index: int) -> dict[str, Any]:
        same = [i for i in range(len(self)) if self.plan[i] == self.plan[index]]
        start = same.index(index)
        for candidate in same[start:] + same[:start]:
            try:
                return self.load(candidate)
            except DataError as exc:
                self.bad.skip(exc)
        first = f"; the first: {self.bad.reasons[0]}" if self.bad.reasons else ""
        raise DataError(f"no clip of shape {self.plan[index]} in the dataset can be read{first}")


def build_dataset(config: Config, parsed: OpenSoraData) -> PlannedClipDataset:
    """The clips the data section names (generated moving shapes when it names none)."""
    param = parsed.data.dataset_param
    if not param.data_path:
        param = with_synthetic_data(param, model_flavor(config.model).fps)
    clips = read_annotations(param.data_path, param.data_folder or None)
    return PlannedClipDataset(clips, parsed.planner, parsed.use_aesthetic, parsed.data.on_bad_sample,
                              config.training.seed, parsed.drop_short_ratio, parsed.clean_captions)


def buckets(dataset: PlannedClipDataset, loader: Any) -> list | None:
    """The sampler's bucket of each clip: its whole shape with group_data, else by group_frame / group_resolution."""
    if loader.extra.get("group_data", False):
        return dataset.shapes()
    return bucket_keys(dataset.shapes(), loader.group_frame, loader.group_resolution)


class PaddedCollate:
    """Collates clips of different shapes: each zero-padded to the batch's largest, with ``video_mask`` [B, T, H, W]
    marking the latents of its own clip (the release's padding mask; picklable for loader workers)."""

    def __init__(self, vae_strides: tuple[int, int]) -> None:
        self.vae_strides = vae_strides

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        shapes = [item["video"].shape[1:] for item in items]
        if len(set(shapes)) == 1:
            return collate(items)
        frames, height, width = (max(sizes) for sizes in zip(*shapes))
        temporal, spatial = self.vae_strides
        mask = torch.zeros(len(items), (frames - 1) // temporal + 1, height // spatial, width // spatial)
        padded = []
        for i, (item, (t, h, w)) in enumerate(zip(items, shapes)):
            video = item["video"].new_zeros(item["video"].shape[0], frames, height, width)
            video[:, :t, :h, :w] = item["video"]
            padded.append({**item, "video": video})
            mask[i, : (t - 1) // temporal + 1, : h // spatial, : w // spatial] = 1
        return {**collate(padded), "video_mask": mask}


class IndexedFeatures(Dataset):
    """A feature store whose items carry their ``index`` (the per-sample noise seeds draw from it: the clip's, as
    extraction stored it, else the position) and, for I2V, their ``conditions`` (MindSpeed-MM's ``masked_video``
    and ``input_mask`` concatenated along the channels, as the I2V transformer takes them)."""

    def __init__(self, store: Dataset) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"index": index, **self.store[index]}
        if all(key in item for key in MINDSPEED_CONDITIONS):
            parts = [item.pop(key).float() for key in MINDSPEED_CONDITIONS]
            item[CONDITIONS_KEY] = torch.cat(parts)
        return item


def check_feature_store(config: Config, parsed: OpenSoraData) -> None:
    """A ConfigError unless the feature store holds what model.task trains on (I2V: the conditions)."""
    param = parsed.data.dataset_param
    keys = set(stored_keys(parsed.data))
    held = CONDITIONS_KEY in keys or set(MINDSPEED_CONDITIONS) <= keys
    if config.model.task == "i2v" and keys and not held:
        raise ConfigError(
            f"the features at {param.data_path} hold no I2V conditions ({CONDITIONS_KEY}, or MindSpeed-MM's "
            f"{' and '.join(MINDSPEED_CONDITIONS)}), which model.task=i2v trains on (extract with model.task=i2v)"
        )


def text_len(config: Config, parsed: OpenSoraData) -> int:
    """The prompt length the model pads to: model.tokenizer's or data.json's model_max_length, else the flavor's."""
    tokenizer = parsed.data.dataset_param.tokenizer_config
    from_data = tokenizer.get("model_max_length") if isinstance(tokenizer, Mapping) else None
    return config.model.tokenizer.model_max_length or from_data or model_flavor(config.model).text_len


def build_train_loader(config: Config, runtime: Runtime) -> DataLoader:
    """This rank's resumable loader. Grouped (``group_data``), a micro-batch holds one clip shape; ungrouped, clips
    of several shapes are padded to the largest and the batch carries their ``video_mask``. A feature store
    (``dataset_type: feature``, mm's or MindSpeed-MM's) gives latents and prompt embeddings (padded to the text
    length, with their ``prompt_mask``); its samples are not grouped by shape."""
    parsed = parse_data(config)
    param = parsed.data.dataset_param
    if param.dataset_type == FEATURE_TYPE:
        check_feature_store(config, parsed)
        store = IndexedFeatures(open_feature_store(param.data_path, param.data_folder or None))
        floats = ("latents", "prompt_embeds", *((CONDITIONS_KEY,) if config.model.task == "i2v" else ()))
        collate_fn = FeatureCollate(text_len(config, parsed), "prompt_mask", floats)
        return build_rank_loader(store, parsed.data.dataloader_param, config.training.micro_batch_size, runtime,
                                 config.training.seed, collate_fn, None, with_epoch=True)
    dataset = build_dataset(config, parsed)
    loader = parsed.data.dataloader_param
    return build_rank_loader(dataset, loader, config.training.micro_batch_size, runtime, config.training.seed,
                             PaddedCollate(parsed.vae_strides), buckets(dataset, loader), with_epoch=True)


def example_prompt(config: Config) -> str:
    """A caption from the training data (the configured inference prompt when there is none), for a first sample."""
    parsed = parse_data(config)
    param = parsed.data.dataset_param
    if param.dataset_type == FEATURE_TYPE:
        return next((c for c in feature_prompts(param.data_path) if c), config.inference.prompt)
    if not param.data_path:
        param = with_synthetic_data(param, model_flavor(config.model).fps)
    clips = read_annotations(param.data_path, param.data_folder or None)
    return next((c.caption for c in clips if c.caption), config.inference.prompt)
