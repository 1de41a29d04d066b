"""Image-to-video (MindSpeed-MM's ``videoditsparsei2v``, the release's ``OpenSoraInpaint_v1_3``).

The predictor also sees the latents of the masked clip (the frames kept as conditions, zero elsewhere) and the mask
compressed to the latent grid (4 channels: each latent frame's 4 source frames), each through its own patch
embedding and a zero-initialized projection added to the noised latents' tokens. Mask 1 marks a frame to generate.
Which frames a training sample keeps is drawn per sample from ``mask_type_ratio_dict_video``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import PatchEmbed
from torch import nn

from mm_core.errors import ConfigError
from mm_data.transforms import normalize_pixels
from mm_models_video.opensoraplan1_3.model import Carry, OpenSoraPlanT2V
from mm_models_video.opensoraplan1_3.transformer import OpenSoraT2V

# Flips the sample seeds into a stream of their own for the conditions (VAE sample of the masked clip, mask).
CONDITION_SEED_BIT = 1 << 62
MASK_TYPES = ("t2iv", "i2v", "transition", "continuation", "clear", "random_temporal")


class OpenSoraInpaint(OpenSoraT2V):
    """OpenSoraT2V whose input is [noised latents, masked-clip latents, compressed mask] along the channels."""

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 24,
        attention_head_dim: int = 96,
        in_channels: int = 8,
        out_channels: int | None = None,
        num_layers: int = 32,
        dropout: float = 0.0,
        cross_attention_dim: int = 2304,
        attention_bias: bool = True,
        patch_size: int = 2,
        patch_size_t: int = 1,
        activation_fn: str = "gelu-approximate",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        caption_channels: int = 4096,
        interpolation_scale_h: float = 1.0,
        interpolation_scale_w: float = 1.0,
        interpolation_scale_t: float = 1.0,
        sparse1d: bool = False,
        sparse_n: int = 2,
        vae_scale_factor_t: int = 4,
    ) -> None:
        super().__init__(
            num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim, in_channels=in_channels,
            out_channels=out_channels, num_layers=num_layers, dropout=dropout, cross_attention_dim=cross_attention_dim,
            attention_bias=attention_bias, patch_size=patch_size, patch_size_t=patch_size_t,
            activation_fn=activation_fn, norm_elementwise_affine=norm_elementwise_affine, norm_eps=norm_eps,
            caption_channels=caption_channels, interpolation_scale_h=interpolation_scale_h,
            interpolation_scale_w=interpolation_scale_w, interpolation_scale_t=interpolation_scale_t,
            sparse1d=sparse1d, sparse_n=sparse_n,
        )
        inner = self.config.num_attention_heads * self.config.attention_head_dim
        p, channels = self.config.patch_size, self.config.in_channels
        self.pos_embed_masked_hidden_states = nn.ModuleList(
            [PatchEmbed(patch_size=p, in_channels=channels, embed_dim=inner, pos_embed_type=None),
             nn.Linear(inner, inner, bias=False)]
        )
        self.pos_embed_mask = nn.ModuleList(
            [PatchEmbed(patch_size=p, in_channels=vae_scale_factor_t, embed_dim=inner, pos_embed_type=None),
             nn.Linear(inner, inner, bias=False)]
        )
        for branch in (self.pos_embed_masked_hidden_states, self.pos_embed_mask):
            nn.init.zeros_(branch[1].weight)

    def _embed(self, embed: PatchEmbed, latents: torch.Tensor) -> torch.Tensor:
        batch, channels, frames = latents.shape[:3]
        tokens = embed(latents.transpose(1, 2).reshape(batch * frames, channels, *latents.shape[3:]).to(self.dtype))
        return tokens.reshape(batch, frames * tokens.shape[1], tokens.shape[2])

    def patch_embed(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 2·C + 4, T, H, W] -> the sum of the three branches' tokens [B, S, D]."""
        c = self.config.in_channels
        if latents.shape[1] != 2 * c + self.config.vae_scale_factor_t:
            raise ValueError(
                f"the I2V transformer takes {2 * c + self.config.vae_scale_factor_t} channels "
                f"(latents, masked latents, mask), got {latents.shape[1]}"
            )
        hidden = self._embed(self.pos_embed, latents[:, :c])
        masked = self.pos_embed_masked_hidden_states[1](self._embed(self.pos_embed_masked_hidden_states[0],
                                                                    latents[:, c:2 * c]))
        mask = self.pos_embed_mask[1](self._embed(self.pos_embed_mask[0], latents[:, 2 * c:]))
        return hidden + masked + mask


def frame_mask(kind: str, num_frames: int, generator: torch.Generator, min_clear: float = 0.0,
               max_clear: float = 1.0) -> torch.Tensor:
    """[T] with 1 for each frame to generate, 0 for each kept one, as the release's mask generators."""
    mask = torch.ones(num_frames)
    if kind == "i2v":
        mask[0] = 0
    elif kind == "transition":
        mask[0] = mask[-1] = 0
    elif kind == "clear":
        mask.zero_()
    elif kind in ("continuation", "random_temporal"):
        low, high = math.floor(num_frames * min_clear), math.ceil(num_frames * max_clear)
        count = int(torch.randint(low, high + 1, (), generator=generator))
        if kind == "continuation":
            mask[:count] = 0
        else:
            mask[torch.randperm(num_frames, generator=generator)[:count]] = 0
    elif kind != "t2iv":
        raise ConfigError(f"mask type {kind!r} is not one of {', '.join(MASK_TYPES)}")
    return mask


def compress_mask(mask: torch.Tensor, strides: tuple[int, int]) -> torch.Tensor:
    """Pixel mask [B, 1, 1+4k, H, W] -> [B, 4, 1+k, H/8, W/8]: bilinear to the latent size, 4 frames per channel."""
    temporal, spatial = strides
    batch, _, frames, height, width = mask.shape
    small = F.interpolate(mask.transpose(1, 2).flatten(0, 1), size=(height // spatial, width // spatial),
                          mode="bilinear").unflatten(0, (batch, frames)).transpose(1, 2)
    small = torch.cat([small[:, :, :1].expand(-1, -1, temporal, -1, -1), small[:, :, 1:]], dim=2)
    small = small.reshape(batch, -1, temporal, *small.shape[3:])
    return small.transpose(1, 2).contiguous()


class OpenSoraPlanI2V(OpenSoraPlanT2V):
    """OpenSoraPlanT2V whose predictor (OpenSoraInpaint) is conditioned on kept frames of the clip.

    ``mask_type_ratio`` maps mask types (``MASK_TYPES``) to their weights when drawing a training sample's mask.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.mask_type_ratio: Mapping[str, float] = {"i2v": 1.0}

    def draw_masks(self, num_frames: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One frame mask [B, T] per sample: its type drawn by ``mask_type_ratio``, then the mask (its generator)."""
        kinds = list(self.mask_type_ratio)
        bounds = torch.tensor(list(self.mask_type_ratio.values()), dtype=torch.float64).cumsum(0)
        masks = []
        for generator in generators:
            u = torch.rand((), generator=generator, device=generator.device, dtype=torch.float64).item()
            kind = kinds[min(int(torch.searchsorted(bounds, u * bounds[-1].item(), right=True)), len(kinds) - 1)]
            masks.append(frame_mask(kind, num_frames, generator))
        return torch.stack(masks)

    def conditions(self, video: torch.Tensor, masks: torch.Tensor,
                   generators: Sequence[torch.Generator] | None) -> torch.Tensor:
        """[masked-clip latents, compressed mask] [B, C + 4, 1+k, h, w] of pixels [B, 3, T, H, W] and masks [B, T]."""
        pixels = normalize_pixels(video)
        mask = masks.to(pixels.device, pixels.dtype)[:, None, :, None, None].expand(-1, 1, -1, *pixels.shape[3:])
        masked = self.encode_video(pixels * (mask < 0.5), generators)
        return torch.cat([masked, compress_mask(mask, self.vae_strides).to(masked.dtype)], dim=1)

    def sample_conditions(self, video: torch.Tensor, noise_seeds: Sequence[int] | None) -> torch.Tensor:
        """:meth:`conditions` of masks drawn per sample, from its seed's condition stream (else the global RNG)."""
        seeds = noise_seeds if noise_seeds is not None else torch.randint(0, 2**62, (video.shape[0],)).tolist()
        generators = [torch.Generator(video.device).manual_seed(int(s) ^ CONDITION_SEED_BIT) for s in seeds]
        return self.conditions(video, self.draw_masks(video.shape[2], generators), generators)

    def features(self, batch: dict) -> dict:
        """OpenSoraPlanT2V's features and the sample's ``conditions``."""
        if "video" not in batch:
            return batch
        conditions = self.sample_conditions(batch["video"], batch.get("noise_seeds"))
        return {**super().features(batch), "conditions": conditions}

    def embed(self, video: torch.Tensor | None = None, conditions: torch.Tensor | None = None,
              noise_seeds: Sequence[int] | None = None, **inputs: object) -> Carry:
        """As OpenSoraPlanT2V.embed, with ``conditions`` (else drawn from ``video``'s masks, per sample)."""
        if conditions is None:
            if video is None:
                raise ValueError("OpenSoraPlanI2V needs the clip (video) or its conditions")
            conditions = self.sample_conditions(video, noise_seeds)
        return super().embed(video=video, noise_seeds=noise_seeds, conditions=conditions, **inputs)
