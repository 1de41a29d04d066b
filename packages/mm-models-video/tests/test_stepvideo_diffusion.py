"""Training and sampling agree: the noising, the predictor's time and the velocity target are those the Euler sampler
integrates (the release's, from noise at t = 0 to data at t = 1 with shift 13). MindSpeed-MM's training code gives the
predictor 1000·σ·1000 and regresses ε - x0, which its sampler would integrate backwards; these tests pin the fix."""

from __future__ import annotations

import torch

from mm_models_video.flow_matching import NoiseToDataFlowMatching

SHIFT, STEPS = 13.0, 50


def _release_schedule(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-Video's FlowMatchDiscreteScheduler.set_timesteps (reverse=False): its sigmas and model timesteps."""
    sigmas = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    sigmas = 1 - shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas.float(), sigmas[:-1].float()


def test_the_sampler_is_the_releases_schedule() -> None:
    fm = NoiseToDataFlowMatching(shift=SHIFT)
    release_sigmas, release_times = _release_schedule(STEPS, SHIFT)
    ours = fm.sampling_sigmas(STEPS)
    torch.testing.assert_close(1 - ours[:-1], release_times)  # the time the predictor is given
    x, v = torch.randn(3, 4), torch.randn(3, 4)
    for k in range(STEPS):  # the release's step: x + v · (sigma[k+1] - sigma[k]) of its own sigmas
        expected = x + v * (release_sigmas[k + 1] - release_sigmas[k])
        torch.testing.assert_close(fm.step(x, v, ours[k], ours[k + 1]), expected)


def test_training_target_is_the_sampler_velocity_at_the_same_noise_level() -> None:
    fm = NoiseToDataFlowMatching(shift=SHIFT)
    x0, noise = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    sigmas = fm.sampling_sigmas(STEPS)
    target = fm.target(x0, noise)
    for k in range(STEPS):
        index = torch.tensor([k * fm.num_train_timesteps // STEPS] * 2)  # the training grid point at sigma[k]
        noised, times = fm.add_noise(x0, noise, index)
        torch.testing.assert_close(times, (1 - sigmas[k]).expand(2))  # the same time given to the predictor
        torch.testing.assert_close(noised, (1 - sigmas[k]) * x0 + sigmas[k] * noise)
        # The sampler following the training target from x_sigma[k] lands on x_sigma[k+1] of the same path.
        stepped = fm.step(noised, target, sigmas[k], sigmas[k + 1])
        torch.testing.assert_close(stepped, (1 - sigmas[k + 1]) * x0 + sigmas[k + 1] * noise)


def test_sampling_with_the_training_target_recovers_the_data_from_pure_noise() -> None:
    fm = NoiseToDataFlowMatching(shift=SHIFT)
    x0, noise = torch.randn(4, 8), torch.randn(4, 8)
    sigmas = fm.sampling_sigmas(STEPS)
    assert sigmas[0] == 1 and sigmas[-1] == 0
    x = noise
    for k in range(STEPS):
        x = fm.step(x, fm.target(x0, noise), sigmas[k], sigmas[k + 1])
    torch.testing.assert_close(x, x0)


def test_training_draws_shifted_noise_levels() -> None:
    """Training noise levels are the shifted grid: with shift 13 most of them are close to pure noise."""
    fm = NoiseToDataFlowMatching(shift=SHIFT)
    _, times = fm.add_noise(torch.zeros(1000, 1), torch.zeros(1000, 1), torch.arange(1000))
    assert times.min() == 0 and times.max() < 1 and (times < 0.5).float().mean() > 0.9
