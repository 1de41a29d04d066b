"""v1.3's DDPM training: v-prediction on a zero-terminal-SNR schedule, min-SNR-5 weights, stratified timesteps."""

from __future__ import annotations

import torch

from mm_models_video.opensoraplan1_3.diffusion import OpenSoraDiffusion, diffusion_loss


def _generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_explicit_uniform_gives_each_rank_its_interval() -> None:
    """Rank r of n draws from [rT/n, (r+1)T/n): a step's timesteps cover the whole range (1000 on 4 ranks)."""
    diffusion = OpenSoraDiffusion()
    latents = torch.zeros(64, 2, 1, 1, 1)
    for rank in range(4):
        _, t = diffusion.draw(latents, _generators(range(64)), rank, 4)
        assert t.min() >= 250 * rank and t.max() <= 250 * (rank + 1) - 1, (rank, t.min(), t.max())
    _, alone = diffusion.draw(latents, _generators(range(64)))
    assert alone.min() < 250 and alone.max() >= 750
    noise, t = diffusion.draw(latents[:3], _generators([5, 6, 7]))
    noise_one, t_one = diffusion.draw(latents[:1], _generators([6]))
    torch.testing.assert_close(noise[1:2], noise_one, rtol=0, atol=0)
    assert t[1] == t_one[0]


def test_v_target_and_zero_terminal_snr() -> None:
    diffusion = OpenSoraDiffusion()
    alphas = diffusion.scheduler.alphas_cumprod
    assert alphas[-1] == 0  # zero terminal SNR: t = 999 is pure noise
    x0, eps, t = torch.randn(2, 4, 1, 2, 2), torch.randn(2, 4, 1, 2, 2), torch.tensor([10, 999])
    a = alphas[t].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(diffusion.add_noise(x0, eps, t), a.sqrt() * x0 + (1 - a).sqrt() * eps)
    torch.testing.assert_close(diffusion.target(x0, eps, t), a.sqrt() * eps - (1 - a).sqrt() * x0)


def test_min_snr_weights_and_masked_loss() -> None:
    diffusion = OpenSoraDiffusion()
    t = torch.tensor([5, 500, 999])
    alphas = diffusion.scheduler.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    torch.testing.assert_close(diffusion.loss_weights(t), torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))
    pred, target = torch.randn(2, 3, 2, 2, 2), torch.randn(2, 3, 2, 2, 2)
    weights = torch.tensor([0.5, 2.0])
    mask = torch.ones(2, 2, 2, 2)
    mask[1, 1] = 0  # the second clip's last latent frame is padding
    error = (pred - target) ** 2 * weights.view(2, 1, 1, 1, 1)
    keep = mask[:, None].expand_as(error)
    torch.testing.assert_close(diffusion_loss(pred, target, weights, mask), (error * keep).sum() / keep.sum())
    torch.testing.assert_close(diffusion_loss(pred, target, weights), error.mean())
