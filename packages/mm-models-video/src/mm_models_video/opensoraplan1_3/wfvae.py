"""WF-VAE (the wavelet-flow VAE of Open-Sora-Plan 1.3): causal, 4×8×8 compression, its latents scaled and shifted.

The encoder's main path sees the 3D Haar subbands of the clip; two side paths carry the 2D and 3D Haar subbands of
its low band ("energy flow") into the main one at each level, and the decoder mirrors them. Layer names are the
release's ``WFVAEModel`` (``modeling_wfvae.py``). Encode and decode run on the whole clip, or with
:meth:`WFVAEModel.enable_tiling` chunk by chunk along time (8 frames, 2 latents), each chunk's causal layers taking
what they need of the previous one from their caches, as the release's tiled mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.distributed import ProcessGroup

from mm_core.errors import ConfigError
from mm_models_video.opensoraplan1_3.wfvae_blocks import (
    AttnBlock3DFix,
    CausalConv3d,
    Conv2d,
    Downsample,
    HaarWaveletTransform2D,
    HaarWaveletTransform3D,
    InverseHaarWaveletTransform2D,
    InverseHaarWaveletTransform3D,
    ResnetBlock2D,
    ResnetBlock3D,
    Spatial2xTime2x3DDownsample,
    Spatial2xTime2x3DUpsample,
    Upsample,
    normalize,
    swish,
)
from mm_models_video.vae_cp import causal_conv_ops, encode_split

# The (temporal, spatial) compression of WF-VAE D8 4×8×8.
VAE_STRIDES = (4, 8)
# Tiled mode: frames per encoder chunk and latent frames per decoder chunk (the release's t_chunk_enc / _dec).
ENCODE_CHUNK, DECODE_CHUNK = 8, 2


class Encoder(nn.Module):
    """Pixels [B, 3, 1+4k, H, W] -> the posterior's mean and log-variance [B, 2·latent, 1+k, H/8, W/8]."""

    def __init__(self, latent_dim: int, base_channels: int, num_resblocks: int, energy_flow_hidden_size: int,
                 dropout: float, use_attention: bool, norm_type: str) -> None:
        super().__init__()
        c, flow = base_channels, energy_flow_hidden_size
        self.down1 = nn.Sequential(
            Conv2d(24, c, kernel_size=3, padding=1),
            *[ResnetBlock2D(c, c, dropout, norm_type) for _ in range(num_resblocks)],
            Downsample(c, c),
        )
        self.down2 = nn.Sequential(
            Conv2d(c + flow, c * 2, kernel_size=3, padding=1),
            *[ResnetBlock3D(c * 2, c * 2, dropout, norm_type) for _ in range(num_resblocks)],
            Spatial2xTime2x3DDownsample(c * 2, c * 2),
        )
        self.connect_l1 = Conv2d(12, flow, kernel_size=3, padding=1)
        self.connect_l2 = Conv2d(24, flow, kernel_size=3, padding=1)
        mid = [ResnetBlock3D(c * 2 + flow, c * 4, dropout, norm_type), ResnetBlock3D(c * 4, c * 4, dropout, norm_type)]
        if use_attention:
            mid.insert(1, AttnBlock3DFix(c * 4, norm_type))
        self.mid = nn.Sequential(*mid)
        self.norm_out = normalize(c * 4, norm_type)
        self.conv_out = CausalConv3d(c * 4, latent_dim * 2, 3, padding=1)
        self.wavelet_transform_in = HaarWaveletTransform3D()
        self.wavelet_transform_l1 = HaarWaveletTransform2D()
        self.wavelet_transform_l2 = HaarWaveletTransform3D()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The moments of the posterior."""
        coeffs = self.wavelet_transform_in(x)
        l1_coeffs = self.wavelet_transform_l1(coeffs[:, :3])
        l1 = self.connect_l1(l1_coeffs)
        l2 = self.connect_l2(self.wavelet_transform_l2(l1_coeffs[:, :3]))
        h = self.down1(coeffs)
        h = self.down2(torch.cat([h, l1], dim=1))
        h = self.mid(torch.cat([h, l2], dim=1))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Latents [B, latent, 1+k, h, w] -> pixels [B, 3, 1+4k, 8h, 8w]."""

    def __init__(self, latent_dim: int, base_channels: int, num_resblocks: int, energy_flow_hidden_size: int,
                 dropout: float, use_attention: bool, norm_type: str, t_interpolation: str,
                 connect_res_layer_num: int) -> None:
        super().__init__()
        c, flow = base_channels, energy_flow_hidden_size
        self.energy_flow_hidden_size = flow
        self.conv_in = CausalConv3d(latent_dim, c * 4, 3, padding=1)
        mid = [ResnetBlock3D(c * 4, c * 4, dropout, norm_type), ResnetBlock3D(c * 4, c * 4 + flow, dropout, norm_type)]
        if use_attention:
            mid.insert(1, AttnBlock3DFix(c * 4, norm_type))
        self.mid = nn.Sequential(*mid)
        self.up2 = nn.Sequential(
            *[ResnetBlock3D(c * 4, c * 4, dropout, norm_type) for _ in range(num_resblocks)],
            Spatial2xTime2x3DUpsample(c * 4, c * 4, t_interpolation=t_interpolation),
            ResnetBlock3D(c * 4, c * 4 + flow, dropout, norm_type),
        )
        self.up1 = nn.Sequential(
            *[ResnetBlock3D(c * (4 if i == 0 else 2), c * 2, dropout, norm_type) for i in range(num_resblocks)],
            Upsample(c * 2, c * 2),
            ResnetBlock3D(c * 2, c * 2, dropout, norm_type),
        )
        self.layer = nn.Sequential(*[ResnetBlock3D(c * (2 if i == 0 else 1), c, dropout, norm_type) for i in range(2)])
        self.connect_l1 = nn.Sequential(
            *[ResnetBlock3D(flow, flow, dropout, norm_type) for _ in range(connect_res_layer_num)],
            Conv2d(flow, 12, kernel_size=3, padding=1),
        )
        self.connect_l2 = nn.Sequential(
            *[ResnetBlock3D(flow, flow, dropout, norm_type) for _ in range(connect_res_layer_num)],
            Conv2d(flow, 24, kernel_size=3, padding=1),
        )
        self.norm_out = normalize(c, norm_type)
        self.conv_out = Conv2d(c, 24, kernel_size=3, padding=1)
        self.inverse_wavelet_transform_out = InverseHaarWaveletTransform3D()
        self.inverse_wavelet_transform_l1 = InverseHaarWaveletTransform2D()
        self.inverse_wavelet_transform_l2 = InverseHaarWaveletTransform3D()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The reconstructed pixels, in [-1, 1] for a trained model."""
        flow = self.energy_flow_hidden_size
        h = self.mid(self.conv_in(z))
        l2 = self.inverse_wavelet_transform_l2(self.connect_l2(h[:, -flow:]))
        h = self.up2(h[:, :-flow])
        l1_coeffs = self.connect_l1(h[:, -flow:])
        l1_coeffs = torch.cat([l1_coeffs[:, :3] + l2, l1_coeffs[:, 3:]], dim=1)
        l1 = self.inverse_wavelet_transform_l1(l1_coeffs)
        h = self.layer(self.up1(h[:, :-flow]))
        h = self.conv_out(swish(self.norm_out(h)))
        h = torch.cat([h[:, :3] + l1, h[:, 3:]], dim=1)
        return self.inverse_wavelet_transform_out(h)


class WFVAEModel(ModelMixin, ConfigMixin):
    """The release's ``WFVAEModel`` (config keys as its config.json); ``scale`` and ``shift`` normalize latents."""

    @register_to_config
    def __init__(
        self,
        latent_dim: int = 8,
        base_channels: int = 128,
        encoder_num_resblocks: int = 2,
        encoder_energy_flow_hidden_size: int = 64,
        decoder_num_resblocks: int = 2,
        decoder_energy_flow_hidden_size: int = 128,
        use_attention: bool = True,
        dropout: float = 0.0,
        norm_type: str = "layernorm",
        t_interpolation: str = "trilinear",
        connect_res_layer_num: int = 2,
        scale: Sequence[float] = (0.18215,) * 8,
        shift: Sequence[float] = (0.0,) * 8,
    ) -> None:
        super().__init__()
        if len(scale) != latent_dim or len(shift) != latent_dim:
            raise ValueError(
                f"WF-VAE scale and shift need one value per latent channel ({latent_dim}), "
                f"got {len(scale)} and {len(shift)}"
            )
        self.encoder = Encoder(latent_dim, base_channels, encoder_num_resblocks, encoder_energy_flow_hidden_size,
                               dropout, use_attention, norm_type)
        self.decoder = Decoder(latent_dim, base_channels, decoder_num_resblocks, decoder_energy_flow_hidden_size,
                               dropout, use_attention, norm_type, t_interpolation, connect_res_layer_num)
        self.use_tiling = False
        # A decoder chunk ends with one latent frame of overlap: before the time upsampling that is one frame the
        # causal caches leave out, after it two.
        decoder = self.decoder
        self._set_cache_offset([decoder.up2, decoder.connect_l2, decoder.conv_in, decoder.mid], 1)
        self._set_cache_offset([decoder.up2[-2:], decoder.up1, decoder.connect_l1, decoder.layer], 2)

    @staticmethod
    def _set_cache_offset(modules: list[nn.Module], offset: int) -> None:
        for module in modules:
            for sub in module.modules():
                if isinstance(sub, CausalConv3d):
                    sub.cache_offset = offset

    def _start(self, part: nn.Module) -> None:
        """Empty ``part``'s caches; the next chunk is the first."""
        for module in part.modules():
            if hasattr(module, "cache"):
                module.cache.clear()
        self._first_chunk(part, True)

    @staticmethod
    def _first_chunk(part: nn.Module, first: bool) -> None:
        for module in part.modules():
            if hasattr(module, "first_chunk"):
                module.first_chunk = first

    def enable_tiling(self, use_tiling: bool = True) -> None:
        """Encode and decode chunk by chunk along time (less memory for long clips)."""
        self.use_tiling = use_tiling
        for module in self.modules():
            if hasattr(module, "chunked"):
                module.chunked = use_tiling

    @staticmethod
    def _chunks(frames: int, size: int) -> list[tuple[int, int]]:
        """[0, 1), then chunks of ``size`` frames."""
        return [(0, 1), *((start, min(start + size, frames)) for start in range(1, frames, size))]

    def _tile_encode(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for i, (start, end) in enumerate(self._chunks(x.shape[2], ENCODE_CHUNK)):
            self._first_chunk(self.encoder, i == 0)
            out.append(self.encoder(x[:, :, start:end]))
        return torch.cat(out, dim=2)

    def _tile_decode(self, z: torch.Tensor) -> torch.Tensor:
        out, frames = [], z.shape[2]
        for i, (start, end) in enumerate(self._chunks(frames, DECODE_CHUNK)):
            self._first_chunk(self.decoder, i == 0)
            overlap = end + 1 < frames
            chunk = self.decoder(z[:, :, start:end + 1] if overlap else z[:, :, start:end])
            out.append(chunk[:, :, :-VAE_STRIDES[0]] if overlap else chunk)
        return torch.cat(out, dim=2)

    @property
    def strides(self) -> tuple[int, int]:
        """(temporal, spatial) compression: 4 and 8."""
        return VAE_STRIDES

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """The posterior of pixels [B, 3, 1+4k, H, W] in [-1, 1]."""
        self._start(self.encoder)
        return DiagonalGaussianDistribution(self._tile_encode(x) if self.use_tiling else self.encoder(x))

    def encode_split(self, x: torch.Tensor, group: ProcessGroup) -> DiagonalGaussianDistribution:
        """The posterior of ``x`` with its frames split over ``group`` (VAE-CP: every rank passes the whole clip and
        encodes its share, the causal convolutions' halos passed between ranks); equal to :meth:`encode`."""
        if self.use_tiling:
            raise ConfigError("model.ae.vae_cp_size: VAE-CP encodes whole clips; turn off model.ae.enable_tiling")
        if self.config.norm_type == "groupnorm":
            raise ConfigError("model.ae.vae_cp_size: a WF-VAE with norm_type groupnorm normalizes over all frames, "
                              "which a split of the frames cannot reproduce")
        self._start(self.encoder)
        ops = causal_conv_ops(self.encoder, CausalConv3d)
        return DiagonalGaussianDistribution(encode_split(self.encoder, x, ops, self.strides[0], group))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw (unscaled) latents -> pixels."""
        self._start(self.decoder)
        return self._tile_decode(z) if self.use_tiling else self.decoder(z)

    def latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale) shaped [1, C, 1, 1, 1] like ``like``: normalized = (z - shift) · scale."""
        shape = (1, -1, 1, 1, 1)
        shift = torch.tensor(self.config.shift, device=like.device, dtype=like.dtype).view(shape)
        scale = torch.tensor(self.config.scale, device=like.device, dtype=like.dtype).view(shape)
        return shift, scale
