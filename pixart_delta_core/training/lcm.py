"""LCM distillation (PixArt-δ, docs/REFERENCE.md §3 and §6): a consistency model from a frozen teacher.

One step: noise a latent to t on the teacher's DDIM grid (50 of 1000 timesteps, skip 20); the
teacher, guided by ``cond + w (cond - uncond)`` with the learned null caption, takes one DDIM step to
t - 20; the student's consistency output at t is pulled towards the target model's at t - 20. The
consistency output is ``c_skip(t) x_t + c_out(t) x0_pred``, with the boundary scalings (sigma_data 0.5,
timestep scaling 10) taken from the very scheduler our ``lcm`` sampler builds, so sampling inverts
exactly what was trained.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..models.transformer import PixArtTransformer
from ..sampling.choices import Sampler
from ..sampling.samplers import scheduler_for
from .cache import Batch
from .config import LcmLoss, LcmSection
from .diffusion import noise_schedule
from .draws import Draws
from .trainers import TRAIN_TIMESTEPS, Trainer, training_latents, with_null_captions

Denoiser = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]  # (x_t, t, caption, mask) -> noise prediction


def boundary_scalings(t: Tensor) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) at timesteps ``t``: those of the scheduler the ``lcm`` sampler runs."""
    return scheduler_for(Sampler.LCM).get_scalings_for_boundary_condition_discrete(t.double())


def consistency_output(x_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """The consistency function f(x_t, t) = c_skip(t) x_t + c_out(t) x0_pred(x_t, eps, t), per sample."""
    c_skip, c_out = (c.to(x_t.device, x_t.dtype).reshape(-1, 1, 1, 1) for c in boundary_scalings(t))
    return c_skip * x_t + c_out * noise_schedule().predicted_x0(x_t, eps, t)


def lcm_loss(
    student: Denoiser,
    teacher: Denoiser,
    target: Denoiser,
    latents: Tensor,
    caption: Tensor,
    null: Tensor,
    mask: Tensor,
    draws: Draws,
    settings: LcmSection,
) -> Tensor:
    """The consistency distillation loss of one batch (mean over samples)."""
    skip = TRAIN_TIMESTEPS // settings.ddim_steps
    t = (draws.timesteps(settings.ddim_steps) + 1) * skip - 1  # 19, 39, ..., 999
    t_prev = (t - skip).clamp(min=0)
    schedule = noise_schedule()
    x_t = schedule.add_noise(latents, draws.noise, t)
    prediction = consistency_output(x_t, student(x_t, t, caption, mask), t)
    with torch.no_grad():
        eps_cond = teacher(x_t, t, caption, mask)
        eps_uncond = teacher(x_t, t, null, mask)
        eps = eps_cond + settings.guidance * (eps_cond - eps_uncond)
        x0 = schedule.predicted_x0(x_t, eps_cond, t)
        x0 = x0 + settings.guidance * (x0 - schedule.predicted_x0(x_t, eps_uncond, t))
        abar_prev = schedule.at(schedule.alphas_cumprod, t_prev, latents)
        x_prev = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps  # deterministic DDIM step to t_prev
        goal = consistency_output(x_prev, target(x_prev, t_prev, caption, mask), t_prev)
    difference = (prediction.float() - goal.float()).flatten(1)
    if settings.loss is LcmLoss.HUBER:
        c = settings.huber_c
        return (torch.sqrt(difference.pow(2) + c**2) - c).mean()
    return difference.pow(2).mean()


def noise_of(model: nn.Module, image_size: tuple[int, int], channels: int) -> Denoiser:
    """A transformer as a ``Denoiser``: the noise half of its (learned-sigma) output."""
    return lambda x, t, caption, mask: model(x, t, caption, mask, image_size)[:, :channels].float()


class LcmTrainer(Trainer):
    """LCM distillation: student trained, teacher frozen, target the student's EMA (decay 0.95)."""

    def __init__(
        self,
        transformer: PixArtTransformer,
        scaling_factor: float,
        settings: LcmSection,
        teacher_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(transformer, scaling_factor, caption_dropout=0.0)
        self.settings = settings
        self.teacher = copy.deepcopy(transformer).requires_grad_(False).eval().to(teacher_dtype)
        self.target = copy.deepcopy(transformer).requires_grad_(False).eval()

    def loss(self, module: nn.Module, batch: Batch, draws: Draws) -> Tensor:
        channels = self.transformer.config.in_channels
        latents = training_latents(batch, draws, self.scaling_factor)
        null = with_learned_null(self.transformer, batch)
        student, teacher, target = (noise_of(m, batch.size, channels) for m in (module, self.teacher, self.target))
        return lcm_loss(student, teacher, target, latents, batch.caption, null, batch.mask, draws, self.settings)

    @torch.no_grad()
    def after_step(self) -> None:
        decay = self.settings.ema_decay
        for ema, online in zip(self.target.parameters(), self.transformer.parameters(), strict=True):
            ema.lerp_(online.detach().to(ema.dtype), 1 - decay)

    def state(self) -> dict[str, Tensor]:
        return {f"target.{k}": v for k, v in self.target.state_dict().items()}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        self.target.load_state_dict({k.removeprefix("target."): v for k, v in tensors.items()})

    @property
    def saved_transformer(self) -> PixArtTransformer:
        """The EMA target is the distilled model, as the LCM recipe keeps it."""
        return self.target

    def save(self, folder: Path, weights: Mapping[str, Tensor] | None = None) -> Path:
        """The EMA target's weights, not the student's (``weights``); LCM runs unsharded."""
        return super().save(folder, self.target.state_dict())


def with_learned_null(model: PixArtTransformer, batch: Batch) -> Tensor:
    """The learned null caption for every sample of ``batch`` [B, L, C] (the teacher's unconditional input)."""
    return with_null_captions(model, batch, torch.ones(len(batch), dtype=torch.bool, device=batch.caption.device))
