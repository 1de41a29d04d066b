from __future__ import annotations

import pytest
import torch

from mm_core.errors import ConfigError
from mm_data.transforms import check_video_shape, resize_center_crop


@pytest.mark.parametrize("in_hw", [(48, 80), (80, 48), (32, 32), (100, 30)])
def test_resize_center_crop_gives_the_requested_size(in_hw: tuple[int, int]) -> None:
    video = torch.randint(0, 256, (3, *in_hw, 3), dtype=torch.uint8)
    out = resize_center_crop(video, 32, 48)
    assert out.shape == (3, 3, 32, 48)
    assert out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1


def test_center_crop_keeps_the_middle_and_maps_to_minus_one_one() -> None:
    video = torch.zeros(1, 16, 32, 3, dtype=torch.uint8)
    video[:, :, 8:24] = 255
    out = resize_center_crop(video, 16, 16)
    assert torch.equal(out, torch.ones(3, 1, 16, 16))
    black = torch.zeros(1, 16, 16, 3, dtype=torch.uint8)
    assert torch.equal(resize_center_crop(black, 16, 16), -torch.ones(3, 1, 16, 16))


@pytest.mark.parametrize("in_hw", [(32, 60), (20, 24)])  # a crop alone; an antialiased upscale, then a crop
def test_values_are_exactly_pixel_over_127_5_minus_one(in_hw: tuple[int, int]) -> None:
    video = torch.randint(0, 256, (2, *in_hw, 3), dtype=torch.uint8)
    frames = video.permute(0, 3, 1, 2).float()
    if in_hw != (32, 60):
        frames = torch.nn.functional.interpolate(frames, size=(32, 38), mode="bilinear", antialias=True)
    left = (frames.shape[-1] - 32) // 2
    expected = (frames[..., left : left + 32] / 127.5 - 1.0).clamp(-1, 1).permute(1, 0, 2, 3)
    out = resize_center_crop(video, 32, 32)
    assert out.is_contiguous() and torch.equal(out, expected)


def test_check_video_shape_accepts_wan_shapes() -> None:
    check_video_shape(81, 480, 832)
    check_video_shape(17, 64, 64)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((16, 64, 64), r"num_frames 16 must be 4k\+1 \(e.g. 13 or 17\)"),
        ((17, 60, 64), r"height 60 must be a multiple of 16 \(e.g. 48\)"),
        ((17, 64, 70), r"width 70 must be a multiple of 16 \(e.g. 64\)"),
    ],
)
def test_check_video_shape_names_the_wrong_value(shape: tuple[int, int, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_video_shape(*shape)
