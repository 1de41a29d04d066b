"""CustomModel: the guide's composite of ae + text_encoder + predictor + diffusion, whose forward returns the loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from transformers import UMT5EncoderModel

from mm_models_video.custom_dit.dit import CustomDiT
from mm_models_video.flow_matching import FlowMatching
from mm_models_video.frozen import FrozenEncoders


class CustomModel(FrozenEncoders):
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
        super().__init__(ae, text_encoder, norm_latents, do_sample, external)
        self.predictor = predictor
        self.diffusion = diffusion

    @torch.no_grad()
    def encode_text(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask [B, L] -> float32 UMT5 embeddings [B, L, D], zero past each prompt's end."""
        hidden = self.text_encoder(prompt_ids, prompt_mask).last_hidden_state
        return (hidden * prompt_mask.unsqueeze(-1).to(hidden.dtype)).float()

    def forward(
        self,
        video: torch.Tensor,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        noise_seeds: Sequence[int] | torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | int]:
        """Encode, noise and predict: ``{"loss": per-sample MSE [B], "tokens": latent tokens in the batch}``.

        Each sample's noise and timestep come from the global RNG, or from a generator seeded with its
        entry of ``noise_seeds``: then they do not depend on how samples are split over ranks.
        """
        latents = self.encode_video(video)
        prompt_embeds = self.encode_text(prompt_ids, prompt_mask)
        if noise_seeds is None:
            noise, timestep_indices = torch.randn_like(latents), self.diffusion.sample_indices(latents.shape[0])
        else:
            noise, timestep_indices = self.diffusion.draw(latents, noise_seeds)
        noised, timesteps = self.diffusion.add_noise(latents, noise, timestep_indices)
        pred = self.predictor(noised, timesteps, prompt_embeds)
        target = self.diffusion.target(latents, noise)
        loss = F.mse_loss(pred.float(), target, reduction="none").flatten(1).mean(dim=1)
        patch = self.predictor.patch_size
        return {"loss": loss, "tokens": noised[:, 0].numel() // (patch[0] * patch[1] * patch[2])}
