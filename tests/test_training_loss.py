"""The PixArt-α training loss against torch.distributions (an independent Gaussian KL and CDF)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pixart_delta_core.training.config import LossWeighting
from pixart_delta_core.training.diffusion import diffusion_loss, noise_schedule
from pixart_delta_core.training.trainers import timestep_weights


def _reference_posterior(x0, x_t, t):
    """q(x_{t-1} | x_t, x_0) from the DDPM formulas (Ho et al. 2020, eq. 6-7), in float64."""
    s = noise_schedule()
    abar, abar_prev, beta = s.alphas_cumprod[t], s.alphas_cumprod_prev[t], s.betas[t]
    mean = (beta * abar_prev.sqrt() / (1 - abar)) * x0 + ((1 - abar_prev) * (1 - beta).sqrt() / (1 - abar)) * x_t
    variance = beta * (1 - abar_prev) / (1 - abar)
    return mean, variance, beta


def test_loss_is_mse_plus_the_kl_of_the_learned_variance() -> None:
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 4, 4, generator=generator), torch.randn(2, 4, 4, 4, generator=generator)
    output = torch.randn(2, 8, 4, 4, generator=generator).clamp(-1, 1)
    t = torch.tensor([500, 37])
    x_t = noise_schedule().add_noise(x0, noise, t)
    loss = diffusion_loss(output, x0, x_t, noise, t)
    for i in range(2):
        mse = (noise[i] - output[i, :4]).pow(2).mean()
        mean, variance, beta = _reference_posterior(x0[i].double(), x_t[i].double(), t[i])
        abar = noise_schedule().alphas_cumprod[t[i]]
        x0_pred = (x_t[i].double() - (1 - abar).sqrt() * output[i, :4].double()) / abar.sqrt()
        model_mean, _, _ = _reference_posterior(x0_pred, x_t[i].double(), t[i])
        fraction = (output[i, 4:].double() + 1) / 2
        log_var = fraction * beta.log() + (1 - fraction) * variance.log()
        kl = kl_divergence(Normal(mean, variance.sqrt()), Normal(model_mean, (0.5 * log_var).exp()))
        expected = mse.double() + kl.mean() / math.log(2)
        torch.testing.assert_close(loss[i].double(), expected, rtol=1e-4, atol=1e-6)


def test_t0_term_is_the_discretised_likelihood_and_sigma_trains_only_through_the_bound() -> None:
    generator = torch.Generator().manual_seed(1)
    x0 = torch.rand(1, 4, 2, 2, generator=generator) * 1.6 - 0.8  # inside (-1, 1): no edge bins
    noise = torch.randn(1, 4, 2, 2, generator=generator)
    output = torch.zeros(1, 8, 2, 2, requires_grad=True)
    t = torch.tensor([0])
    x_t = noise_schedule().add_noise(x0, noise, t)
    loss = diffusion_loss(output, x0, x_t, noise, t)
    beta = noise_schedule().betas[0]
    abar = noise_schedule().alphas_cumprod[0]
    model_mean, _, _ = _reference_posterior((x_t.double() - (1 - abar).sqrt() * 0) / abar.sqrt(), x_t.double(), 0)
    std = (0.25 * (beta.log() + noise_schedule().posterior_log_variance[0])).exp()  # fraction 1/2: mean log var
    normal = Normal(model_mean, std)
    nll = -(normal.cdf(x0.double() + 1 / 255) - normal.cdf(x0.double() - 1 / 255)).log()
    expected = (noise.double()).pow(2).mean() + nll.mean() / math.log(2)
    torch.testing.assert_close(loss[0].double(), expected, rtol=1e-4, atol=1e-6)
    # The bound's gradient reaches the variance channels only: the noise channels get the MSE's gradient alone.
    loss.sum().backward()
    torch.testing.assert_close(output.grad[:, :4], -2 * noise / noise.numel())
    assert output.grad[:, 4:].abs().sum() > 0


def test_p2_weighting_scales_the_noise_error_by_one_over_one_plus_snr_to_the_gamma() -> None:
    # Choi et al. 2022, eq. 8 with k = 1, normalised to a mean of 1 over the timesteps.
    generator = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 50, 400, 800, 999])
    x0, noise = torch.randn(5, 4, 4, 4, generator=generator), torch.randn(5, 4, 4, 4, generator=generator)
    eps = noise + 0.1 * torch.randn(5, 4, 4, 4, generator=generator)
    s = noise_schedule()
    x_t = s.add_noise(x0, noise, t).float()
    snr = s.alphas_cumprod / (1 - s.alphas_cumprod)
    for gamma in (1.0, 0.5):
        table = timestep_weights(LossWeighting.P2, gamma)
        raw = (1 + snr) ** -gamma
        torch.testing.assert_close(table.double(), raw / raw.mean(), rtol=1e-6, atol=0)
        weighted = diffusion_loss(eps, x0, x_t, noise, t, table[t])  # 4 channels: the MSE term alone
        torch.testing.assert_close(weighted, (eps - noise).pow(2).mean((1, 2, 3)) * table[t])
        assert table[50] < (0.2 if gamma == 0.5 else 0.05) * table[999]  # measured: 0.17 and 0.03
        assert table[999].item() == pytest.approx(table[800].item(), rel=0.01)
    assert timestep_weights(LossWeighting.UNIFORM) is None
    torch.testing.assert_close(diffusion_loss(eps, x0, x_t, noise, t), (eps - noise).pow(2).mean((1, 2, 3)))


def test_the_trainer_weighs_each_samples_noise_error_by_its_timestep() -> None:
    # Linear in the weights, and the weights of ones give the plain loss: ignoring them would break both.
    from pixart_delta_core.training.cache import Batch
    from pixart_delta_core.training.draws import draw
    from pixart_delta_core.training.trainers import Trainer
    from tests.helpers import random_transformer
    from tests.test_training_data import TRAIN_TINY

    generator = torch.Generator().manual_seed(0)
    mean, caption = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 16, 64, generator=generator)
    batch = Batch(caption, torch.ones(4, 16, dtype=torch.long), mean, torch.full_like(mean, 0.1), None, (64, 64))
    draws = draw(0, 0, 0, 4, (4, 8, 8))
    model = random_transformer(TRAIN_TINY, seed=2)

    def loss(weights: torch.Tensor | None) -> float:
        with torch.no_grad():
            return Trainer(model, 0.18215, 0.0, weights).loss(model, batch, draws).item()

    zero, one, two = (loss(torch.full((1000,), w)) for w in (0.0, 1.0, 2.0))
    assert one == pytest.approx(loss(None), rel=1e-6) and zero < 0.9 * one
    assert two - one == pytest.approx(one - zero, rel=1e-4)
