"""One conversation to token ids and labels: the processor's chat template, vision tokens, masking, truncation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import av
from PIL import Image

from mm_core.errors import DataError
from mm_data.mllm_format import MllmRecord

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodeSettings:
    """What changes the encoding of a sample (and so the cache key)."""

    cutoff_len: int = 1024
    image_min_pixels: int = 0
    image_max_pixels: int = 262144
    video_min_pixels: int = 0
    video_max_pixels: int = 16384
    video_fps: float = 2.0
    video_maxlen: int = 64
    train_on_prompt: bool = False
    mask_history: bool = False

    def image_size(self) -> dict[str, int]:
        """The image processor's ``size`` for min/max pixels (its resize needs a positive minimum)."""
        return {"shortest_edge": max(self.image_min_pixels, 1), "longest_edge": self.image_max_pixels}

    def video_size(self) -> dict[str, int]:
        """The video processor's ``size`` for min/max pixels."""
        return {"shortest_edge": max(self.video_min_pixels, 1), "longest_edge": self.video_max_pixels}

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for the cache key."""
        return asdict(self)


@dataclass
class Encoded:
    """A tokenized sample: ids, labels (-100 off the assistant's tokens), its media and how much was cut."""

    input_ids: list[int]
    labels: list[int]
    images: list[str]
    videos: list[str]
    video_frames: list[int]
    truncated_tokens: int = 0


def video_frame_count(path: str, fps: float, maxlen: int, temporal_patch: int) -> tuple[int, int, int]:
    """(frames, height, width) that decoding ``path`` at ``fps``, at most ``maxlen`` frames, will give."""
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            total, rate = stream.frames, float(stream.average_rate or 0)
            if not total and stream.duration and stream.time_base:
                total = int(stream.duration * stream.time_base * rate)
            height, width = stream.codec_context.height, stream.codec_context.width
    except (av.FFmpegError, OSError, IndexError) as exc:
        raise DataError(f"video {path} cannot be read: {exc}") from None
    frames = min(maxlen, math.floor(total * fps / rate) if rate else 0)
    frames -= frames % temporal_patch
    if frames < temporal_patch:
        raise DataError(f"video {path} is too short: {total} frames at {rate:g} fps give none at {fps:g} fps")
    return frames, height, width


class Encoder:
    """Encodes MllmRecords with a Qwen2.5-VL processor under fixed settings."""

    def __init__(self, processor, settings: EncodeSettings) -> None:
        self.processor = processor
        self.settings = settings
        self.tokenizer = processor.tokenizer
        self.image_token, self.video_token = processor.image_token, processor.video_token
        self.vision_ids = {processor.image_token_id, processor.video_token_id}

    def _render(self, chat: list[dict], **kwargs) -> str:
        return self.processor.apply_chat_template(chat, tokenize=False, **kwargs)

    def _segments(self, record: MllmRecord) -> list[tuple[str, bool]]:
        """The rendered conversation cut into (text, is an assistant answer) pieces, in order."""
        chat, pieces, done = record.chat(), [], ""
        answers = [i for i, turn in enumerate(chat) if turn["role"] == "assistant"]
        for i in answers:
            prompt = self._render(chat[:i], add_generation_prompt=True)
            full = self._render(chat[: i + 1])
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise DataError(f"{record.source}: the chat template does not render turns incrementally")
            pieces += [(prompt[len(done):], False), (full[len(prompt):], True)]
            done = full
        return pieces

    def _media_tokens(self, record: MllmRecord) -> tuple[list[int], list[int], list[int]]:
        """Vision tokens per image, per video, and each video's frame count."""
        s, ip, vp = self.settings, self.processor.image_processor, self.processor.video_processor
        images = []
        for path in record.images:
            try:
                with Image.open(path) as image:
                    width, height = image.size
            except OSError as exc:
                raise DataError(f"{record.source}: image {path} cannot be read: {exc}") from None
            patches = ip.get_number_of_image_patches(height, width, {"min_pixels": s.image_size()["shortest_edge"],
                                                                    "max_pixels": s.image_max_pixels})
            images.append(patches // ip.merge_size**2)
        videos, frames = [], []
        for path in record.videos:
            count, height, width = video_frame_count(str(path), s.video_fps, s.video_maxlen, vp.temporal_patch_size)
            patches = vp.get_num_of_video_patches(count, height, width, {"size": s.video_size()})
            videos.append(patches // vp.merge_size**2)
            frames.append(count)
        return images, videos, frames

    def _expand(self, text: str, token: str, counts: list[int]) -> str:
        parts = text.split(token)
        out = [parts[0]]
        for part in parts[1:]:
            out += [token * counts.pop(0), part]
        return "".join(out)

    def encode(self, record: MllmRecord) -> Encoded:
        """Token ids and labels of ``record``; a DataError says why it cannot be used (it is then dropped)."""
        s = self.settings
        image_counts, video_counts, frames = self._media_tokens(record)
        pieces = self._segments(record)
        last_answer = max(i for i, (_, answer) in enumerate(pieces) if answer)
        ids: list[int] = []
        labels: list[int] = []
        for n, (text, answer) in enumerate(pieces):
            text = self._expand(self._expand(text, self.image_token, image_counts), self.video_token, video_counts)
            piece = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            trained = s.train_on_prompt or (answer and (not s.mask_history or n == last_answer))
            ids += piece
            labels += [t if trained and t not in self.vision_ids else IGNORE_INDEX for t in piece]
        truncated = max(len(ids) - s.cutoff_len, 0)
        if truncated:
            last_vision = max((i for i, t in enumerate(ids) if t in self.vision_ids), default=-1)
            if last_vision + 1 >= s.cutoff_len:
                raise DataError(f"{record.source}: its image/video tokens end at {last_vision + 2}, beyond "
                                f"cutoff_len {s.cutoff_len}")
            ids, labels = ids[: s.cutoff_len], labels[: s.cutoff_len]
        if all(label == IGNORE_INDEX for label in labels):
            raise DataError(f"{record.source}: no assistant tokens within cutoff_len {s.cutoff_len}")
        return Encoded(ids, labels, [str(p) for p in record.images], [str(p) for p in record.videos], frames,
                       truncated)
