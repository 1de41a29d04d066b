"""Wan2.1's flow-matching diffusion: shifted sigmas, noising, the velocity target and the sampling scheduler."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


class FlowMatching:
    """x_t = (1 - σ) x0 + σ ε at a shifted σ; the predictor learns the velocity ε - x0 (timestep = 1000 σ)."""

    def __init__(
        self, num_train_timesteps: int = 1000, shift: float = 5.0, sigma_min: float = 0.0, extra_one_step: bool = True
    ) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.shift = shift
        steps = num_train_timesteps + 1 if extra_one_step else num_train_timesteps
        sigmas = torch.linspace(1.0, sigma_min, steps)[:num_train_timesteps]
        self.sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self.timesteps = self.sigmas * num_train_timesteps

    def sample_indices(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """One uniformly drawn training-timestep index per sample."""
        return torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator)

    def add_noise(
        self, latents: torch.Tensor, noise: torch.Tensor, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noised latents x_t and the predictor's timesteps for the sigmas at ``indices``."""
        indices = indices.cpu()
        sigma = self.sigmas[indices].to(latents.device, latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
        noised = (1 - sigma) * latents + sigma * noise
        return noised, self.timesteps[indices].to(latents.device)

    @staticmethod
    def target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The velocity the predictor regresses: ε - x0."""
        return noise - latents

    def sampling_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        """diffusers' Euler flow-matching scheduler with the same shift, for generation."""
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.num_train_timesteps, shift=self.shift)
