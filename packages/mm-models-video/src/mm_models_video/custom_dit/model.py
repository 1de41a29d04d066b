"""CustomModel: the guide's composite of ae + text_encoder + predictor + diffusion, whose forward returns the loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from torch import nn
from transformers import UMT5EncoderModel

from mm_models_video.custom_dit.dit import CustomDiT
from mm_models_video.wan2_1.diffusion import FlowMatching
from mm_models_video.wan2_1.model import _allow_missing_external, _drop_external


class CustomModel(nn.Module):
    """Frozen Wan VAE (ae) and UMT5 (text_encoder), a trained CustomDiT (predictor) and flow matching (diffusion).

    Frozen parts named in ``external`` came from pretrained weights: checkpoints leave them out, as the
    guide's ``state_dict`` keeps only the predictor, and loading accepts their absence.
    """

    def __init__(
        self,
        ae: AutoencoderKLWan,
        text_encoder: UMT5EncoderModel,
        predictor: CustomDiT,
        diffusion: FlowMatching,
        norm_latents: bool = True,
        do_sample: bool = False,
        external: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.ae = ae.requires_grad_(False).eval()
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.predictor = predictor
        self.diffusion = diffusion
        self.norm_latents = norm_latents
        self.do_sample = do_sample
        self.external = tuple(external)
        self.register_state_dict_post_hook(_drop_external)
        self.register_load_state_dict_post_hook(_allow_missing_external)

    def train(self, mode: bool = True) -> CustomModel:
        """Set the predictor's mode; the frozen parts always stay in eval mode."""
        super().train(mode)
        self.ae.eval()
        self.text_encoder.eval()
        return self

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, T, H, W] in [-1, 1] -> float32 latents, normalized by the VAE's channel mean and std."""
        posterior = self.ae.encode(video.to(self.ae.dtype)).latent_dist
        latents = (posterior.sample() if self.do_sample else posterior.mode()).float()
        if self.norm_latents:
            shape = (1, -1, 1, 1, 1)
            mean = torch.tensor(self.ae.config.latents_mean, device=latents.device).view(shape)
            std = torch.tensor(self.ae.config.latents_std, device=latents.device).view(shape)
            latents = (latents - mean) / std
        return latents

    @torch.no_grad()
    def encode_text(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask [B, L] -> float32 UMT5 embeddings [B, L, D], zero past each prompt's end."""
        hidden = self.text_encoder(prompt_ids, prompt_mask).last_hidden_state
        return (hidden * prompt_mask.unsqueeze(-1).to(hidden.dtype)).float()

    def draw_noise(
        self, latents: torch.Tensor, noise_seeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian noise like ``latents`` and one training-timestep index per sample."""
        if noise_seeds is None:
            return torch.randn_like(latents), self.diffusion.sample_indices(latents.shape[0])
        noise, indices = [], []
        for seed in noise_seeds.tolist():
            generator = torch.Generator().manual_seed(int(seed))
            noise.append(torch.randn(latents.shape[1:], generator=generator))
            indices.append(self.diffusion.sample_indices(1, generator=generator))
        return torch.stack(noise).to(latents.device), torch.cat(indices)

    def forward(
        self,
        video: torch.Tensor,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        noise_seeds: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | int]:
        """Encode, noise and predict: ``{"loss": per-sample MSE [B], "tokens": latent tokens in the batch}``.

        Each sample's noise and timestep come from the global RNG, or from a generator seeded with its
        entry of ``noise_seeds``: then they do not depend on how samples are split over ranks.
        """
        latents = self.encode_video(video)
        prompt_embeds = self.encode_text(prompt_ids, prompt_mask)
        noise, timestep_indices = self.draw_noise(latents, noise_seeds)
        noised, timesteps = self.diffusion.add_noise(latents, noise, timestep_indices)
        pred = self.predictor(noised, timesteps, prompt_embeds)
        target = self.diffusion.target(latents, noise)
        loss = F.mse_loss(pred.float(), target, reduction="none").flatten(1).mean(dim=1)
        patch = self.predictor.patch_size
        return {"loss": loss, "tokens": noised[:, 0].numel() // (patch[0] * patch[1] * patch[2])}
