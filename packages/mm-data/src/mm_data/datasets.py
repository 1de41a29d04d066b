"""Video-text datasets over a video index, with bad samples skipped (and counted) or raised."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from mm_core.errors import DataError
from mm_data.bad_samples import BadSamples
from mm_data.clip_options import ClipOptions, clip_options
from mm_data.formats import CAPTION_KEYS, DatasetParam, VideoRecord, read_index
from mm_data.transforms import resize_center_crop
from mm_data.video import FrameSampling, read_video

Tokenizer = Callable[[str], Mapping[str, torch.Tensor]]


class VideoTextDataset(Dataset):
    """Map-style dataset of {"video": uint8 [C, T, H, W], "prompt": str, "index": int}.

    With a ``tokenizer`` (a callable from the prompt to a dict of tensors, e.g. input_ids and
    attention_mask) its output is merged into each item. A sample whose video is missing, corrupt
    or too short, or whose caption is not a string, is bad: with ``on_bad_sample="skip"`` it is
    logged, counted in ``bad_samples`` and replaced by the next good sample; with ``"error"`` it
    raises DataError. The clip start is random, drawn from ``seed`` and the index so that a
    sample reads the same frames every time. ``options`` (the data.json's frame and resize keys, see
    :mod:`mm_data.clip_options`) set the frame stride, skipped first frames, speed-up, caption dropout and, with
    ``force_resolution: false``, each clip's own size (left out when it does not fit: a bad sample). With
    ``drop_short_ratio`` below 1 a clip too short for ``num_frames`` is left out with that probability (when the
    index states its frames, and its fps where ``train_fps`` sets the stride: here, otherwise as a bad sample when
    read) or read with fewer frames. Read with an ``(epoch, index)`` key (``epoch_keyed``: the sampler's
    ``with_epoch``), a caption is dropped per epoch; an integer key reads epoch 0.
    """

    epoch_keyed = True

    def __init__(
        self,
        records: Sequence[VideoRecord],
        num_frames: int,
        height: int,
        width: int,
        target_fps: float | None = None,
        tokenizer: Tokenizer | None = None,
        on_bad_sample: str = "skip",
        seed: int = 0,
        backend: str | None = None,
        options: ClipOptions | None = None,
    ) -> None:
        self.bad = BadSamples(on_bad_sample)
        self.num_frames, self.height, self.width = num_frames, height, width
        self.target_fps = target_fps
        self.tokenizer = tokenizer
        self.seed = seed
        self.backend = backend
        self.options = options or ClipOptions(FrameSampling(num_frames, target_fps))
        self.records = [record for index, record in enumerate(records) if not self._dropped(record, index)]

    def _stated_frames(self, record: VideoRecord) -> int | None:
        """The frames a clip gives as its index states it (0: too short); None when the index cannot say."""
        sampling = self.options.sampling
        needs_fps = sampling.target_fps is not None and not sampling.interval
        if record.num_frames is None or (needs_fps and record.fps is None):
            return None
        return sampling.frame_count(record.num_frames, record.fps or 1.0)

    def _dropped(self, record: VideoRecord, index: int) -> bool:
        """Whether the index states a short clip that ``drop_short_ratio`` leaves out (MindSpeed-MM's draw before
        training)."""
        if self.options.sampling.min_num_frames is None:
            return False
        frames = self._stated_frames(record)
        return frames is not None and 0 < frames < self.num_frames and self.options.drops_short(self.seed, index)

    @classmethod
    def from_param(
        cls, param: DatasetParam, tokenizer: Tokenizer | None = None, on_bad_sample: str = "skip", seed: int = 0,
        origin: str = "",
    ) -> VideoTextDataset:
        """Build from a data.json ``dataset_param`` block: its index, num_frames, max size, train_fps and the frame
        and resize keys mm honours.

        ``origin`` names the config key (and file) that gave the index, for the error when it is missing.
        """
        return cls(
            read_index(param.data_path, param.data_folder or None, origin),
            num_frames=param.num_frames,
            height=param.max_height,
            width=param.max_width,
            target_fps=param.train_fps,
            tokenizer=tokenizer,
            on_bad_sample=on_bad_sample,
            seed=seed,
            options=clip_options(param),
        )

    def __len__(self) -> int:
        return len(self.records)

    @property
    def bad_samples(self) -> int:
        """How many bad samples were skipped so far (in this process)."""
        return self.bad.count

    def shapes(self) -> list[tuple[int | None, int | None, int | None]]:
        """Each sample's (num_frames, height, width) as its index states them (per-clip sizes: as planned from
        them), for bucketing."""
        planner = self.options.planner
        shapes = [record.shape for record in self.records]
        if self.options.sampling.min_num_frames is not None:  # short clips kept: the frames each gives
            shapes = [(self._stated_frames(record) or frames, h, w)
                      for record, (frames, h, w) in zip(self.records, shapes)]
        if planner is None:
            return shapes
        return [(frames, *(planner.size(record.height, record.width) or (None, None)))
                for record, (frames, _, _) in zip(self.records, shapes)]

    def _resize(self, index: int, frames: torch.Tensor) -> torch.Tensor:
        planner = self.options.planner
        if planner is None:
            return resize_center_crop(frames, self.height, self.width)
        in_h, in_w = frames.shape[1:3]
        size = planner.size(in_h, in_w)
        if size is None:
            raise DataError(f"sample {index} ({self.records[index].path}): a {in_h}×{in_w} clip does not fit "
                            f"max_hxw {planner.max_hxw} (min_hxw {planner.min_hxw}, hw_aspect_thr "
                            f"{planner.hw_aspect_thr:g}, hw_stride {planner.hw_stride})")
        return planner.resize(frames, *size)

    def load(self, index: int, epoch: int = 0) -> dict[str, Any]:
        """Sample ``index`` as read in ``epoch`` (its caption dropped or not), or DataError when it is bad, whatever
        ``on_bad_sample`` says."""
        record = self.records[index]
        if record.caption is None:
            raise DataError(f"sample {index} ({record.path}): its index entry has no caption "
                            f"(key {' or '.join(repr(k) for k in CAPTION_KEYS)})")
        if not isinstance(record.caption, str):
            raise DataError(f"sample {index} ({record.path}): caption {record.caption!r} is not a string")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        frames = read_video(record.path, self.num_frames, generator=generator, backend=self.backend,
                            sampling=self.options.sampling)
        if len(frames) < self.num_frames and self._stated_frames(record) is None \
                and self.options.drops_short(self.seed, index):
            raise DataError(f"sample {index} ({record.path}): a short clip ({len(frames)} frames of num_frames "
                            f"{self.num_frames}), left out by drop_short_ratio {self.options.drop_short_ratio:g}")
        caption = "" if self.options.drops_caption(self.seed, epoch, index) else record.caption
        item = {"video": self._resize(index, frames), "prompt": caption, "index": index}
        if self.tokenizer is not None:
            item.update(self.tokenizer(caption))
        return item

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            try:
                return self.load(candidate, epoch)
            except DataError as exc:
                self.bad.skip(exc)
        first = f"; the first: {self.bad.reasons[0]}" if self.bad.reasons else ""
        raise DataError(f"no sample of the {len(self)} in the dataset can be read{first}")


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack the items' tensors (video, tokenized text) and indices; list their prompts.

    Tensors are stacked by torch's ``default_collate``, which in a loader worker stacks straight into shared
    memory: a clip crosses to the main process without another copy.
    """
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor):
            shapes = sorted({tuple(value.shape) for value in values})
            if len(shapes) > 1:
                raise DataError(f"a batch's {key!r} tensors differ in shape ({', '.join(map(str, shapes))}): "
                                "samples of several sizes (force_resolution: false, short clips kept by "
                                "drop_short_ratio, features of such clips) batch grouped by size (group_resolution, "
                                "group_frame, the index giving each resolution and frame count) or one at a time "
                                "(micro_batch_size 1)")
            batch[key] = default_collate(values)
        elif isinstance(values[0], int):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch
