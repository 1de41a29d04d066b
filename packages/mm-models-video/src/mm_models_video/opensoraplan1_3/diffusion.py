"""OpenSoraPlan 1.3's training diffusion: DDPM, v-prediction, zero terminal SNR, min-SNR-γ weights, stratified t.

Each sample's noise and timestep come from a generator seeded with its own seed (``flow_matching.noise_seeds``:
training seed, epoch, dataset index), so they do not depend on the batch it is in. ``explicit_uniform`` (the
release's ``explicit_uniform_sampling``) draws data-parallel rank r's timesteps from the r-th of dp_size equal
intervals of [0, T), so that every step covers the whole range; ``uniform`` draws from all of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDPMScheduler, EulerAncestralDiscreteScheduler
from diffusers.training_utils import compute_snr

from mm_core.config import Config
from mm_core.errors import ConfigError

T_SAMPLE_METHODS = ("explicit_uniform", "uniform")
PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")


class OpenSoraDiffusion:
    """diffusers' DDPMScheduler for noising and targets, the release's loss weighting and timestep sampling."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        prediction_type: str = "v_prediction",
        rescale_betas_zero_snr: bool = True,
        snr_gamma: float | None = 5.0,
        t_sample_method: str = "explicit_uniform",
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"model.diffusion.prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}"
            )
        if t_sample_method not in T_SAMPLE_METHODS:
            raise ConfigError(
                f"model.diffusion.t_sample_method must be one of {', '.join(T_SAMPLE_METHODS)}, "
                f"got {t_sample_method!r}"
            )
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            prediction_type=prediction_type,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        self.snr_gamma = snr_gamma
        self.t_sample_method = t_sample_method

    @classmethod
    def from_config(cls, diffusion: Config) -> OpenSoraDiffusion:
        """From a model.json ``diffusion`` section (MindSpeed-MM's DDPM keys)."""
        return cls(
            diffusion.num_train_steps,
            diffusion.prediction_type,
            diffusion.rescale_betas_zero_snr,
            None if diffusion.snr_gamma is None else float(diffusion.snr_gamma),
            diffusion.t_sample_method,
        )

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of training timesteps."""
        return self.scheduler.config.num_train_timesteps

    def timestep_range(self, dp_rank: int, dp_size: int) -> tuple[float, float]:
        """The interval this data-parallel rank draws timesteps from (before rounding)."""
        total = self.num_train_timesteps
        if self.t_sample_method == "uniform":
            return -0.5, total - 0.5
        interval = total / dp_size
        return interval * dp_rank - 0.5, interval * (dp_rank + 1) - 0.5

    def draw(
        self, latents: torch.Tensor, generators: Sequence[torch.Generator], dp_rank: int = 0, dp_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's integer timestep and noise (shaped like its latents), from its own generator."""
        low, high = self.timestep_range(dp_rank, dp_size)
        noise, timesteps = [], []
        for generator in generators:
            u = torch.rand((), generator=generator, device=latents.device, dtype=torch.float64)
            timesteps.append(torch.round(low + u * (high - low)).clamp(0, self.num_train_timesteps - 1).long())
            noise.append(torch.randn(latents.shape[1:], generator=generator, device=latents.device,
                                     dtype=latents.dtype))
        return torch.stack(noise), torch.stack(timesteps)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε."""
        return self.scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the predictor regresses: the velocity √ᾱ ε - √(1-ᾱ) x0 (v-prediction), ε, or x0."""
        kind = self.scheduler.config.prediction_type
        if kind == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        return noise if kind == "epsilon" else latents

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Per-sample weights [B]: min(SNR, γ) / (SNR + 1) for v, / SNR for ε (min-SNR-γ); ones without γ."""
        if self.snr_gamma is None:
            return torch.ones(timesteps.shape, dtype=torch.float32, device=timesteps.device)
        snr = compute_snr(self.scheduler, timesteps)
        weights = snr.clamp(max=self.snr_gamma)
        kind = self.scheduler.config.prediction_type
        if kind == "v_prediction":
            return weights / (snr + 1)
        return weights / snr if kind == "epsilon" else weights

    def sampling_scheduler(self) -> EulerAncestralDiscreteScheduler:
        """v1.3's sampler: Euler ancestral with the same betas and prediction, trailing timesteps."""
        config = self.scheduler.config
        return EulerAncestralDiscreteScheduler(
            num_train_timesteps=config.num_train_timesteps,
            prediction_type=config.prediction_type,
            rescale_betas_zero_snr=config.rescale_betas_zero_snr,
            timestep_spacing="trailing" if config.rescale_betas_zero_snr else "leading",
        )


def diffusion_loss(
    pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The release's loss: squared error weighted per sample, averaged over the unpadded latents.

    ``mask`` [B, T, H, W] over the latent grid (1 kept) or None (all kept).
    """
    batch, channels = pred.shape[:2]
    error = (pred.float() - target.float()).pow(2).reshape(batch, -1) * weights.float().reshape(batch, 1)
    if mask is None:
        return error.mean()
    keep = mask[:, None].expand(-1, channels, -1, -1, -1).reshape(batch, -1).float()
    return (error * keep).sum() / keep.sum()
