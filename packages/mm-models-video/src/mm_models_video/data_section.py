"""A video family's data section parsed as a data.json once, the family's default clip shape filling its gaps."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping

from mm_core.config import Config, warn_unused
from mm_data.clip_options import clip_options
from mm_data.formats import DataConfig, parse_data_config


def parse_data_section(data: Config, clip: Mapping[str, int]) -> DataConfig:
    """``data`` as a DataConfig, ``clip`` (num_frames, max_height, max_width) as dataset_param's defaults.

    Building the model, the loader and the closing message all read it: each content is parsed once, and the
    frame and resize keys the video loader cannot honour are named then, one warning line per reason.
    """
    return _parse(json.dumps(data, default=str), json.dumps(dict(clip)))


@functools.lru_cache(maxsize=8)
def _parse(data: str, clip: str) -> DataConfig:
    raw = json.loads(data)
    parsed = parse_data_config({**raw, "dataset_param": {**json.loads(clip), **raw.get("dataset_param", {})}}, "data")
    unused = clip_options(parsed.dataset_param).unused
    warn_unused([(f"data.dataset_param.{key}", why) for key, why in unused], "data section")
    return parsed
