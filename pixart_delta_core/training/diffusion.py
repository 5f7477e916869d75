"""The diffusion maths training needs: PixArt's noise schedule, noising, and the PixArt-α loss.

The loss is the improved-DDPM one PixArt-α trains with (Nichol & Dhariwal 2021, §3.1 "hybrid"
objective): epsilon MSE plus the variational-bound term that trains the learned sigma (the output's
last channels interpolate the log variance between the posterior's and beta_t), the mean taken as
fixed in that term. It is written here because no library the pack uses has it (diffusers' schedulers
sample, they do not train the learned variance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from ..sampling.samplers import NOISE_SCHEDULE


@dataclass(frozen=True)
class NoiseSchedule:
    """Per-timestep quantities of PixArt's DDPM schedule (float64, CPU), indexed by t in 0..999."""

    betas: Tensor
    alphas_cumprod: Tensor

    @property
    def alphas_cumprod_prev(self) -> Tensor:
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @property
    def posterior_log_variance(self) -> Tensor:
        """log of q(x_{t-1} | x_t, x_0)'s variance, its t = 0 value replaced by t = 1's (it is 0 there)."""
        variance = self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        return torch.log(torch.cat([variance[1:2], variance[1:]]))

    def at(self, values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``values[t]`` shaped [B, 1, 1, 1] in ``like``'s dtype and device."""
        return values.to(like.device)[t.to(like.device)].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """q(x_t | x_0): sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise."""
        abar = self.at(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def predicted_x0(self, x_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """x_0 from x_t and the predicted noise (t may be a tensor of timesteps, one per sample)."""
        abar = self.at(self.alphas_cumprod, t, x_t)
        return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


@cache
def noise_schedule() -> NoiseSchedule:
    """PixArt's schedule (linear betas 1e-4 -> 0.02 over 1000 steps, ``sampling.NOISE_SCHEDULE``)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**NOISE_SCHEDULE)
    return NoiseSchedule(scheduler.betas.double(), scheduler.alphas_cumprod.double())


def diffusion_loss(
    output: Tensor, x0: Tensor, x_t: Tensor, noise: Tensor, t: Tensor, mse_weights: Tensor | None = None
) -> Tensor:
    """Per-sample PixArt-α loss [B]: epsilon MSE (times ``mse_weights`` [B] where given), plus the variational
    bound (in bits per dimension) for a learned-sigma output ``[B, 2C, H, W]`` (noise, then the variance
    interpolation in [-1, 1])."""
    channels = x0.shape[1]
    eps = output[:, :channels].float()
    mse = (noise - eps).pow(2).mean(dim=(1, 2, 3))
    if mse_weights is not None:
        mse = mse * mse_weights.to(mse)
    if output.shape[1] == channels:
        return mse
    s = noise_schedule()
    x0, x_t = x0.float(), x_t.float()
    abar, abar_prev = s.at(s.alphas_cumprod, t, x0), s.at(s.alphas_cumprod_prev, t, x0)
    beta = s.at(s.betas, t, x0)
    coef_x0, coef_xt = beta * abar_prev.sqrt() / (1 - abar), (1 - abar_prev) * (1 - beta).sqrt() / (1 - abar)
    true_mean, true_log_var = coef_x0 * x0 + coef_xt * x_t, s.at(s.posterior_log_variance, t, x0)
    # The bound trains the variance only: the mean comes from the noise prediction with its gradient stopped.
    model_mean = coef_x0 * s.predicted_x0(x_t, eps.detach(), t) + coef_xt * x_t
    fraction = (output[:, channels:].float() + 1) / 2  # [B, C, H, W] in [0, 1]
    model_log_var = fraction * beta.log() + (1 - fraction) * true_log_var
    kl = 0.5 * (-1 + model_log_var - true_log_var + (true_log_var - model_log_var).exp())
    kl = kl + 0.5 * (true_mean - model_mean).pow(2) * (-model_log_var).exp()
    nll = -_discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
    vb = torch.where(t.to(x0.device).reshape(-1, 1, 1, 1) == 0, nll, kl).mean(dim=(1, 2, 3)) / math.log(2.0)
    return mse + vb


def _discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log p(x) of data quantised to 256 levels in [-1, 1] under N(mean, exp(log_scale)^2) (the bound's t = 0
    decoder term); the end bins reach to infinity."""
    inv_std = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv_std * (x - mean + 1 / 255))
    cdf_min = torch.special.ndtr(inv_std * (x - mean - 1 / 255))
    tiny = 1e-12
    middle = (cdf_plus - cdf_min).clamp(min=tiny).log()
    lowest, highest = cdf_plus.clamp(min=tiny).log(), (1 - cdf_min).clamp(min=tiny).log()
    return torch.where(x < -0.999, lowest, torch.where(x > 0.999, highest, middle))
