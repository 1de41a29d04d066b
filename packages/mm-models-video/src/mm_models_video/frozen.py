"""FrozenEncoders: the frozen Wan VAE and text encoder that video diffusion composites train a predictor behind."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn
from torch.distributed import ProcessGroup

from mm_data.transforms import normalize_pixels
from mm_models_video.vae_cp import wan_encode

FROZEN = ("ae", "text_encoder")


class FrozenEncoders(nn.Module):
    """Base of composites with a frozen ``ae`` (Wan VAE) and ``text_encoder``, always in eval mode.

    Parts named in ``external`` came from pretrained weights: checkpoints leave them out and loading accepts
    their absence. A pipeline stage without the encoders holds None for them. With ``vae_cp_group`` set (the
    group of ``model.ae.vae_cp_size`` ranks, all passing the same clip) the VAE encodes its frames split over it.
    """

    vae_cp_group: ProcessGroup | None = None

    def __init__(
        self,
        ae: AutoencoderKLWan,
        text_encoder: nn.Module,
        norm_latents: bool = True,
        do_sample: bool = False,
        external: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.ae = ae.requires_grad_(False).eval()
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.norm_latents = norm_latents
        self.do_sample = do_sample
        self.external = tuple(external)
        self.register_state_dict_post_hook(_drop_external)
        self.register_load_state_dict_post_hook(_allow_missing_external)

    def train(self, mode: bool = True) -> FrozenEncoders:
        """Set the trained parts' mode; the frozen parts always stay in eval mode."""
        super().train(mode)
        for name in FROZEN:
            part = getattr(self, name)
            if part is not None:
                part.eval()
        return self

    @property
    def vae_strides(self) -> tuple[int, int]:
        """The frames and pixels one latent spans: the VAE's (temporal, spatial) compression."""
        return self.ae.config.scale_factor_temporal, self.ae.config.scale_factor_spatial

    def latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latent mean and std, shaped [1, z, 1, 1, 1] like ``like``."""
        shape = (1, self.ae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.ae.config.latents_mean).view(shape).to(like.device, like.dtype)
        std = torch.tensor(self.ae.config.latents_std).view(shape).to(like.device, like.dtype)
        return mean, std

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, T, H, W], uint8 or float in [-1, 1] -> float32 latents [B, z, 1 + (T-1)/4, H/8, W/8]."""
        pixels = normalize_pixels(video).to(self.ae.dtype)
        if self.vae_cp_group is not None:
            posterior = DiagonalGaussianDistribution(wan_encode(self.ae, pixels, self.vae_cp_group))
        else:
            posterior = self.ae.encode(pixels).latent_dist
        latents = (posterior.sample() if self.do_sample else posterior.mode()).float()
        if self.norm_latents:
            mean, std = self.latent_stats(latents)
            latents = (latents - mean) / std
        return latents


def _is_external(module: FrozenEncoders, key: str) -> bool:
    return any(f".{part}." in f".{key}" for part in module.external)


def _drop_external(module: FrozenEncoders, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if _is_external(module, k)]:
        del state_dict[key]


def _allow_missing_external(module: FrozenEncoders, incompatible) -> None:
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not _is_external(module, k)]
