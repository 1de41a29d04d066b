"""VAE-CP: a clip's frames encoded over 2 gloo ranks give the single-device latents of the Wan VAE, WF-VAE and
StepVideo VAE; clear errors for what cannot work."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan
from vae_cp_workers import launch

from mm_core.errors import ConfigError
from mm_models_video import vae_cp
from mm_models_video.encoders import TINY_VAE

TOLERANCE = 1e-5


def test_wfvae_latents_on_two_ranks_equal_one_device(tmp_path) -> None:
    report = launch(2, tmp_path / "report.json", [("wfvae", 13)])
    assert max(report["wfvae/13"]["whole"]) < TOLERANCE
    # vae_cp_size 1 of a 2-rank context-parallel group: each rank a VAE-CP group of its own.
    assert max(report["wfvae/13"]["alone"]) < TOLERANCE


@pytest.mark.slow
def test_wan_and_stepvideo_latents_on_two_ranks_equal_one_device(tmp_path) -> None:
    cases = [("wan", 13), ("wan", 9), ("wfvae", 17), ("stepvideo", 2), ("stepvideo_split", 1), ("stepvideo_split", 2)]
    report = launch(2, tmp_path / "report.json", cases)
    for case in ("wan/13", "wan/9", "wfvae/17", "stepvideo/2", "stepvideo_split/1", "stepvideo_split/2"):
        assert max(report[case]["whole"]) < TOLERANCE, case
    # keep_local: each rank holds its tensor_split share of the 4 (or 3) latent frames, equal to the whole's.
    assert report["wan/13"]["local_frames"] == [2, 2]
    assert report["wan/9"]["local_frames"] == [2, 1]
    assert max(report["wan/13"]["local"] + report["wan/9"]["local"]) < TOLERANCE
    # FrozenEncoders.encode_video (wan2_1, custom_dit) with vae_cp_group set: the same normalized latents.
    assert max(report["wan/13"]["encode_video"]) < TOLERANCE


@pytest.mark.slow
def test_three_ranks_with_rank_0_holding_only_the_first_frame(tmp_path) -> None:
    # 9 frames (3 latents) and StepVideo's 17-frame chunk over 3 ranks: rank 0 encodes frame 0 alone, so the
    # halos of rank 2 reach over rank 1 into rank 0.
    cases = [("wan", 9), ("wfvae", 9), ("stepvideo_split", 1), ("stepvideo", 3)]
    report = launch(3, tmp_path / "report.json", cases)
    for name, size in cases:
        assert max(report[f"{name}/{size}"]["whole"]) < TOLERANCE, name
    assert report["wan/9"]["local_frames"] == [1, 1, 1]


def test_frames_per_rank_keep_each_ranks_latents_whole() -> None:
    # 1 + 4·5 frames, 6 latents over 3 ranks: rank 0 holds frame 0 and the smallest share.
    assert vae_cp.frame_ranges(21, 4, 3) == [(0, 5), (5, 13), (13, 21)]
    assert vae_cp.split_latents(6, 3) == [2, 2, 2]
    assert vae_cp.local_shard(5, 1, 2) == (3, 5)


def test_what_cannot_be_split_is_one_error() -> None:
    with pytest.raises(ConfigError, match="needs 1 \\+ 4·k frames"):
        vae_cp.frame_ranges(12, 4, 2)
    with pytest.raises(ConfigError, match="cannot be split over 4 ranks"):
        vae_cp.frame_ranges(9, 4, 4)
    with pytest.raises(ConfigError, match="must divide parallel.cp.size=4"):
        vae_cp.check_vae_cp(3, 4, 1)
    with pytest.raises(ConfigError, match="parallel.pp.size=2"):
        vae_cp.check_vae_cp(2, 2, 2)
    vae = AutoencoderKLWan(**TINY_VAE)
    vae.enable_tiling()
    with pytest.raises(ConfigError, match="turn off model.ae.enable_tiling"):
        vae_cp.wan_encode(vae, torch.zeros(1, 3, 5, 16, 16), group=None)
