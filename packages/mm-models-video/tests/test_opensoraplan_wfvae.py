"""WF-VAE: its wavelets invert, its 4×8×8 causal compression, the release's names, released checkpoints load."""

from __future__ import annotations

import pytest
import torch
from opensoraplan_testing import osp_config

from mm_core.errors import ConfigError
from mm_models_video.opensoraplan1_3.build import build_vae
from mm_models_video.opensoraplan1_3.flavors import get_flavor
from mm_models_video.opensoraplan1_3.wfvae import WFVAEModel
from mm_models_video.opensoraplan1_3.wfvae_blocks import (
    HaarWaveletTransform2D,
    HaarWaveletTransform3D,
    InverseHaarWaveletTransform2D,
    InverseHaarWaveletTransform3D,
)

TINY = get_flavor("tiny").ae


@pytest.mark.parametrize(
    ("forward", "inverse", "atol"),
    [(HaarWaveletTransform2D, InverseHaarWaveletTransform2D, 1e-6),
     # The release's 3D kernels are scaled 0.3536 (not 1/√8): synthesis after analysis is off by 0.02%.
     (HaarWaveletTransform3D, InverseHaarWaveletTransform3D, 3e-3)],
    ids=["2d", "3d"],
)
def test_haar_synthesis_inverts_analysis(forward, inverse, atol) -> None:
    x = torch.randn(2, 3, 9, 8, 12)
    coeffs = forward()(x)
    assert coeffs.shape[1] == 3 * (4 if forward is HaarWaveletTransform2D else 8)
    torch.testing.assert_close(inverse()(coeffs), x, rtol=0, atol=atol)


def test_compresses_4x8x8_causally() -> None:
    """1+4k frames -> 1+k latents of 8 channels; a latent frame never depends on later pixel frames."""
    torch.manual_seed(0)
    vae = WFVAEModel(**TINY).eval()
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(video).mode()
        assert latents.shape == (1, 8, 3, 4, 4)
        assert vae.decode(latents).shape == video.shape
        changed = video.clone()
        changed[:, :, 5:] = 0  # frames 5.. feed latent frame 2 only
        other = vae.encode(changed).mode()
    torch.testing.assert_close(other[:, :, :2], latents[:, :, :2], rtol=0, atol=1e-6)
    assert not torch.allclose(other[:, :, 2], latents[:, :, 2])


def test_state_dict_names_are_the_release_ones() -> None:
    names = set(WFVAEModel(**TINY).state_dict())
    for name in (
        "encoder.down1.0.weight", "encoder.down1.1.norm1.norm.weight", "encoder.down1.2.conv.weight",
        "encoder.down2.1.conv1.conv.weight", "encoder.down2.2.conv.conv.weight", "encoder.connect_l1.weight",
        "encoder.mid.1.q.conv.weight", "encoder.conv_out.conv.weight",
        "encoder.wavelet_transform_in.gh_v_conv.conv.weight",
        "encoder.wavelet_transform_l1.dd", "decoder.conv_in.conv.weight", "decoder.up2.1.conv.conv.weight",
        "decoder.up1.1.conv.weight", "decoder.connect_l2.1.weight", "decoder.layer.1.conv2.conv.weight",
        "decoder.inverse_wavelet_transform_out.hh_v", "decoder.inverse_wavelet_transform_l1.ad",
    ):
        assert name in names, name


def test_loads_a_released_checkpoint_file(tmp_path) -> None:
    """ae.from_pretrained takes the release's merged.ckpt layout (EMA weights under ema_state_dict, module. prefix)."""
    torch.manual_seed(1)
    released = WFVAEModel(**TINY)
    state = {"ema_state_dict": {f"module.{k}": v for k, v in released.state_dict().items()}, "state_dict": {}}
    torch.save(state, tmp_path / "merged.ckpt")
    config = osp_config(f"model.ae.from_pretrained={tmp_path / 'merged.ckpt'}")
    vae = build_vae(config.model, get_flavor("tiny"))
    for name, tensor in released.state_dict().items():
        torch.testing.assert_close(vae.state_dict()[name], tensor, rtol=0, atol=0)
    bad = {"state_dict": {"gen_model": {"encoder.nope": torch.zeros(1)}}}
    torch.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(ConfigError, match=r"model.ae.from_pretrained: .*bad.ckpt does not fit the configured WFVAE"):
        build_vae(osp_config(f"model.ae.from_pretrained={tmp_path / 'bad.ckpt'}").model, get_flavor("tiny"))


def test_tiled_encode_and_decode_equal_the_whole_clip() -> None:
    """ae.use_tiling: 8 frames (2 latents) a chunk, the causal caches carrying the context: the same latents and
    pixels as the whole clip at once."""
    torch.manual_seed(0)
    whole = WFVAEModel(**TINY).eval()
    tiled = build_vae(osp_config("model.ae.use_tiling=true").model, get_flavor("tiny"))
    tiled.load_state_dict(whole.state_dict())
    assert tiled.use_tiling
    video = torch.rand(1, 3, 25, 32, 32) * 2 - 1  # 1 + 3 chunks of 8 frames, 7 latents
    with torch.no_grad():
        latents = whole.encode(video).mode()
        torch.testing.assert_close(tiled.encode(video).mode(), latents, rtol=0, atol=1e-5)
        torch.testing.assert_close(tiled.decode(latents), whole.decode(latents), rtol=0, atol=1e-5)
