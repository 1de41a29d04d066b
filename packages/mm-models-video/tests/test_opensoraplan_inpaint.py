"""I2V's conditions: the release's mask types, the mask compressed to 4 channels per latent frame, drawn by ratio."""

from __future__ import annotations

import pytest
import torch
from opensoraplan_testing import osp_config

from mm_core.errors import ConfigError
from mm_models_video.opensoraplan1_3.build import build_model
from mm_models_video.opensoraplan1_3.inpaint import compress_mask, frame_mask


def test_mask_types_mark_the_frames_to_generate() -> None:
    g = torch.Generator().manual_seed(0)
    assert frame_mask("i2v", 5, g).tolist() == [0, 1, 1, 1, 1]
    assert frame_mask("transition", 5, g).tolist() == [0, 1, 1, 1, 0]
    assert frame_mask("t2iv", 3, g).tolist() == [1, 1, 1] and frame_mask("clear", 3, g).tolist() == [0, 0, 0]
    continuation = frame_mask("continuation", 9, g)
    kept = int((continuation == 0).sum())
    assert continuation[:kept].eq(0).all() and continuation[kept:].eq(1).all()
    with pytest.raises(ConfigError, match="mask type 'first' is not one of t2iv"):
        frame_mask("first", 5, g)


def test_compressed_mask_holds_each_latent_frames_four_source_frames() -> None:
    """[B, 1, 1+4k, H, W] -> [B, 4, 1+k, H/8, W/8]: the first frame fills latent 0's four channels."""
    mask = torch.ones(1, 1, 9, 16, 16)
    mask[:, :, 0] = 0  # i2v
    mask[:, :, 6] = 0  # one more kept frame: latent 2's second source frame
    small = compress_mask(mask, (4, 8))
    assert small.shape == (1, 4, 3, 2, 2)
    assert small[0, :, 0].eq(0).all() and small[0, :, 1].eq(1).all()
    assert small[0, :, 2, 0, 0].tolist() == [1, 0, 1, 1]


def test_training_masks_follow_the_ratio() -> None:
    model = build_model(osp_config("model.task=i2v").model)
    model.mask_type_ratio = {"i2v": 3, "clear": 1}
    masks = model.draw_masks(5, [torch.Generator().manual_seed(s) for s in range(400)])
    clear = int(masks.sum(1).eq(0).sum())
    assert 60 < clear < 140 and int(masks.sum(1).eq(4).sum()) == 400 - clear  # about a quarter clear
