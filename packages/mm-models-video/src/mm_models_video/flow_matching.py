"""Flow-matching diffusion for video models: shifted sigmas, noising, the velocity target, the sampling scheduler."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

from mm_core.config import Config

# Spreads (training seed, epoch, sample index) over distinct generator seeds for up to a million samples.
SEED_STRIDE = 1_000_003


def noise_seeds(
    seed: int, epochs: torch.Tensor | Sequence[int], indices: torch.Tensor | Sequence[int]
) -> list[int]:
    """One generator seed per sample from (training seed, its epoch, its dataset index) alone, whatever the layout.

    A batch's ``"epoch"`` and ``"index"`` give them. The seeds are host integers, so drawing from them never
    waits on the device.
    """
    epochs, indices = (v.tolist() if isinstance(v, torch.Tensor) else v for v in (epochs, indices))
    return [(seed * SEED_STRIDE + int(epoch)) * SEED_STRIDE + int(index) for epoch, index in zip(epochs, indices)]


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
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_config(cls, diffusion: Config) -> FlowMatching:
        """From a model.json ``diffusion`` section (num_train_timesteps, shift, sigma_min, extra_one_step)."""
        return cls(
            diffusion.num_train_timesteps, float(diffusion.shift), float(diffusion.sigma_min), diffusion.extra_one_step
        )

    def sample_indices(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """One uniformly drawn training-timestep index per sample."""
        return torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator)

    def draw(
        self, latents: torch.Tensor, seeds: torch.Tensor | Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's noise (shaped like its latents) and timestep index, from a generator seeded with its seed.

        Pass the seeds as host integers (:func:`noise_seeds`): a device tensor is read back first.
        """
        noise, indices = [], []
        for seed in seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds:
            generator = torch.Generator(latents.device).manual_seed(seed)
            indices.append(
                torch.randint(0, self.num_train_timesteps, (1,), generator=generator, device=latents.device)
            )
            noise.append(
                torch.randn(latents.shape[1:], generator=generator, device=latents.device, dtype=latents.dtype)
            )
        return torch.stack(noise), torch.cat(indices)

    def noise_and_indices(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor | None,
        timestep_indices: torch.Tensor | None,
        seeds: torch.Tensor | Sequence[int] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise and timestep indices given, else drawn per sample from ``seeds`` (:meth:`draw`), else from the
        global RNG."""
        if noise is None and timestep_indices is None and seeds is not None:
            noise, timestep_indices = self.draw(latents, seeds)
        if noise is None:
            noise = torch.randn_like(latents)
        if timestep_indices is None:
            timestep_indices = self.sample_indices(latents.shape[0])
        return noise, timestep_indices

    def add_noise(
        self, latents: torch.Tensor, noise: torch.Tensor, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noised latents x_t and the predictor's timesteps for the sigmas at ``indices``."""
        sigmas, timesteps = self._on(latents.device)
        indices = indices.to(latents.device)
        sigma = sigmas[indices].to(latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
        noised = (1 - sigma) * latents + sigma * noise
        return noised, timesteps[indices]

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The sigma and timestep tables on ``device``, copied once: indexing them there needs no host sync."""
        if device not in self._tables:
            self._tables[device] = (self.sigmas.to(device), self.timesteps.to(device))
        return self._tables[device]

    @staticmethod
    def target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The velocity the predictor regresses: ε - x0."""
        return noise - latents

    def sampling_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        """diffusers' Euler flow-matching scheduler with the same shift, for generation."""
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.num_train_timesteps, shift=self.shift)


class NoiseToDataFlowMatching(FlowMatching):
    """Flow matching in the time convention of samplers that integrate from noise (t = 0) to data (t = 1).

    Step-Video's releases sample this way: the same noising x = (1 - σ) x0 + σ ε at the same shifted σ, but the
    predictor is given the time t = 1 - σ in [0, 1] (it scales it itself) and predicts the velocity
    dx/dt = x0 - ε that the Euler sampler (:meth:`step`) follows as t goes from 0 to 1.
    """

    def add_noise(
        self, latents: torch.Tensor, noise: torch.Tensor, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noised latents x_σ and the predictor's times 1 - σ (float32) for the sigmas at ``indices``."""
        sigmas, _ = self._on(latents.device)
        sigma = sigmas[indices.to(latents.device)]
        view = sigma.to(latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
        return (1 - view) * latents + view * noise, 1 - sigma

    @staticmethod
    def target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The velocity the predictor regresses: x0 - ε, the direction from noise to data."""
        return latents - noise

    def sampling_sigmas(self, steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The ``steps + 1`` noise levels of a sampling run, shifted as in training: from 1 (noise) down to 0."""
        sigmas = torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=torch.float64)
        return (self.shift * sigmas / (1 + (self.shift - 1) * sigmas)).float()

    @staticmethod
    def step(
        sample: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
    ) -> torch.Tensor:
        """One Euler step of dx/dt = velocity from noise level ``sigma`` to ``sigma_next`` (time 1 - σ), in float32."""
        return sample.float() + velocity.float() * (sigma - sigma_next)


def velocity_loss(output: dict) -> tuple[torch.Tensor, dict]:
    """The flow-matching loss of a composite's output: MSE between its ``pred`` and ``target`` velocities, in fp32,
    and the latent ``tokens`` it counts."""
    return F.mse_loss(output["pred"].float(), output["target"].float()), {"tokens": float(output["tokens"])}
