from __future__ import annotations

import pytest
import torch

from mm_core.errors import ConfigError
from mm_data.transforms import check_video_shape, normalize_pixels, resize_center_crop


@pytest.mark.parametrize("in_hw", [(48, 80), (80, 48), (32, 32), (100, 30)])
def test_resize_center_crop_gives_the_requested_size(in_hw: tuple[int, int]) -> None:
    video = torch.randint(0, 256, (3, *in_hw, 3), dtype=torch.uint8)
    out = resize_center_crop(video, 32, 48)
    assert out.shape == (3, 3, 32, 48)
    assert out.dtype == torch.uint8 and out.is_contiguous()


def test_center_crop_keeps_the_middle_and_normalizing_maps_to_minus_one_one() -> None:
    video = torch.zeros(1, 16, 32, 3, dtype=torch.uint8)
    video[:, :, 8:24] = 255
    out = resize_center_crop(video, 16, 16)
    assert torch.equal(out, torch.full((3, 1, 16, 16), 255, dtype=torch.uint8))
    assert torch.equal(normalize_pixels(out), torch.ones(3, 1, 16, 16))
    black = torch.zeros(1, 16, 16, 3, dtype=torch.uint8)
    assert torch.equal(normalize_pixels(resize_center_crop(black, 16, 16)), -torch.ones(3, 1, 16, 16))


@pytest.mark.parametrize("in_hw", [(32, 60), (20, 24)])  # a crop alone; an antialiased upscale, then a crop
def test_pixels_are_the_crop_of_the_source_or_of_its_rounded_resize(in_hw: tuple[int, int]) -> None:
    video = torch.randint(0, 256, (2, *in_hw, 3), dtype=torch.uint8)
    frames = video.permute(0, 3, 1, 2)
    if in_hw != (32, 60):
        resized = torch.nn.functional.interpolate(frames.float(), size=(32, 38), mode="bilinear", antialias=True)
        frames = resized.round().clamp(0, 255).to(torch.uint8)
    left = (frames.shape[-1] - 32) // 2
    assert torch.equal(resize_center_crop(video, 32, 32), frames[..., left : left + 32].permute(1, 0, 2, 3))


def test_normalize_pixels_is_x_over_127_5_minus_one_and_leaves_floats_alone() -> None:
    pixels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(normalize_pixels(pixels), pixels.float() / 127.5 - 1.0)
    already = torch.rand(4) * 2 - 1
    assert normalize_pixels(already) is already


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
