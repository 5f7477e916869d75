"""Sampling: LCM (PixArt-δ, docs/REFERENCE.md §3) and classic solvers with classifier-free guidance.

One loop drives any of diffusers' schedulers (they implement the solvers correctly); this module
adds what PixArt needs around them: the reference LCM timesteps, learned-sigma outputs, CFG over a
single batched forward, img2img strength, the ControlNet hook per step, and noise drawn from the
seed on the CPU generator so that a seed gives the same image on every device.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import InputError
from ..models.transformer import ControlHook, PixArtTransformer
from ..models.transformer_config import vae_defaults_for
from ..text.embedding import TextEmbedding
from ..vae.vae_config import SD_VAE
from .choices import LCM_ORIGINAL_STEPS, MAX_GUIDANCE, SAMPLERS, TRAIN_STEPS, LcmTimesteps, Sampler

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

log = logging.getLogger(__name__)

# PixArt's noise schedule: linear betas 1e-4 -> 0.02 over 1000 steps, epsilon prediction.
NOISE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": TRAIN_STEPS,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}


def reference_lcm_timesteps(steps: int) -> list[int]:
    """Every (50 // steps)-th of the 50 distillation timesteps (19, 39, ..., 999), from the top."""
    skip = (LCM_ORIGINAL_STEPS // steps) * (TRAIN_STEPS // LCM_ORIGINAL_STEPS)
    return [TRAIN_STEPS - 1 - i * skip for i in range(steps)]


@dataclass(frozen=True)
class SamplingSettings:
    """What to run: sampler, steps, guidance (CFG when > 1), img2img strength."""

    sampler: Sampler = Sampler.LCM
    steps: int = 4
    guidance: float = 0.0
    strength: float = 1.0
    lcm_timesteps: LcmTimesteps = LcmTimesteps.REFERENCE

    def __post_init__(self) -> None:
        spec = SAMPLERS[self.sampler]
        if not 1 <= self.steps <= spec.max_steps:
            raise InputError(f"{self.sampler.value} takes 1 to {spec.max_steps} steps, got {self.steps}")
        if not 0.0 < self.strength <= 1.0:
            raise InputError(f"strength (denoise) must be in (0, 1], got {self.strength}")
        if not 0.0 <= self.guidance <= MAX_GUIDANCE:
            raise InputError(f"guidance must be between 0 and {MAX_GUIDANCE:g}, got {self.guidance}")
        if self.steps_run == 0:
            raise InputError(
                f"strength {self.strength} with {self.steps} steps runs no step (int(steps x strength) = 0): "
                f"raise the strength or the steps"
            )

    @classmethod
    def defaults(cls, sampler: Sampler | str, **overrides: Any) -> SamplingSettings:
        """The reference settings for ``sampler`` (LCM: 4 steps, no CFG; DPM-Solver++: 14 steps, 4.5)."""
        sampler = parse_sampler(sampler)
        spec = SAMPLERS[sampler]
        return cls(**{"sampler": sampler, "steps": spec.steps, "guidance": spec.guidance, **overrides})

    @property
    def guided(self) -> bool:
        return self.guidance > 1.0

    @property
    def steps_run(self) -> int:
        """Steps actually run: all of them, or the last int(steps x strength) for img2img."""
        return min(int(self.steps * self.strength), self.steps)


def parse_sampler(name: Sampler | str) -> Sampler:
    if isinstance(name, Sampler):
        return name
    try:
        return Sampler(name)
    except ValueError:
        raise InputError(f"unknown sampler {name!r}: expected one of {', '.join(s.value for s in Sampler)}") from None


@dataclass(frozen=True)
class ControlSchedule:
    """A ControlNet hook and the fraction of the steps where it acts: start <= i / steps < end."""

    hook: ControlHook
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.start < self.end <= 1.0:
            raise InputError(f"control start/end must satisfy 0 <= start < end <= 1, got {self.start}, {self.end}")

    def active(self, step: int, steps: int) -> bool:
        return step in control_steps(self.start, self.end, steps)

    def check_batch(self, images: int) -> None:
        """One control latent, or exactly one per image, before guidance doubles the batch."""
        count = getattr(self.hook, "count", 1)  # a plain function hook carries no count: it serves any batch
        if count not in (1, images):
            raise InputError(f"{count} control images for {images} images: give one, or exactly one per image")


def control_steps(start: float, end: float, steps: int) -> list[int]:
    """The steps (0 to ``steps`` - 1 of a run) where a ControlNet acting from ``start`` to ``end`` (fractions of the
    steps) acts: start <= i / steps < end."""
    return [i for i in range(steps) if start <= i / steps < end]


def check_control_window(start: float, end: float, steps: int, names: tuple[str, str] = ("start", "end")) -> None:
    """Refuse a control window from ``start`` to ``end`` that holds no step of a run of ``steps`` (the ControlNet
    would silently do nothing); ``names`` are the two values' names in the error (``--control-start``...)."""
    if control_steps(start, end, steps):
        return
    fractions = [f"{i / steps:g}" for i in range(steps)]
    listed = ", ".join(fractions if steps <= 8 else [*fractions[:3], "...", fractions[-1]])
    raise InputError(
        f"{names[0]} {start:g} and {names[1]} {end:g} hold no step of the {steps} steps run: step i acts where "
        f"start <= i/{steps} < end (i/{steps}: {listed}); widen the window or raise the steps"
    )


StepCallback = Callable[[int, int, Tensor], None]  # (steps done, steps in all, current latents)


def scheduler_for(sampler: Sampler) -> SchedulerMixin:
    """A fresh diffusers scheduler for ``sampler`` over PixArt's noise schedule, its timesteps not set yet."""
    import diffusers

    spec = SAMPLERS[sampler]
    return getattr(diffusers, spec.scheduler)(**NOISE_SCHEDULE, **spec.options)


def make_scheduler(settings: SamplingSettings, device: torch.device | str = "cpu") -> tuple[SchedulerMixin, Tensor]:
    """The scheduler for ``settings`` and the timesteps this run visits (img2img: the last ones)."""
    scheduler = scheduler_for(settings.sampler)
    if settings.sampler is Sampler.LCM and settings.lcm_timesteps is LcmTimesteps.REFERENCE:
        scheduler.set_timesteps(timesteps=reference_lcm_timesteps(settings.steps), device=device)
    else:
        scheduler.set_timesteps(settings.steps, device=device)
    start = (settings.steps - settings.steps_run) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler, scheduler.timesteps[start:]


def null_caption(transformer: PixArtTransformer, like: TextEmbedding) -> TextEmbedding:
    """The learned null caption (``y_embedding``) as the unconditional input, as the reference does.

    The reference applies the prompt's own mask to it, so the same mask is kept here.
    """
    if not transformer.config.null_caption:
        raise InputError(
            "this transformer has no learned null caption (diffusers-layout weights do not carry one): "
            "give a negative prompt for classifier-free guidance"
        )
    table = transformer.y_embedder.y_embedding  # [L, C]
    if like.length > table.shape[0]:
        raise InputError(f"caption of {like.length} tokens is longer than the model's {table.shape[0]}")
    return TextEmbedding(table[None, : like.length].expand(like.batch_size, -1, -1), like.mask)


def _for_batch(caption: TextEmbedding, batch: int) -> TextEmbedding:
    """One caption per image: a prompt repeated for the images made from it."""
    if caption.batch_size == batch:
        return caption
    if batch % caption.batch_size:
        raise InputError(f"{caption.batch_size} prompts cannot fill a batch of {batch} images (need a multiple)")
    return caption.repeat(batch // caption.batch_size)


def sample(
    transformer: PixArtTransformer,
    cond: TextEmbedding,
    settings: SamplingSettings,
    noise: Tensor,
    *,
    uncond: TextEmbedding | None = None,
    init_latents: Tensor | None = None,
    generator: torch.Generator | None = None,
    image_size: tuple[int, int] | None = None,
    control: ControlSchedule | None = None,
    on_step: StepCallback | None = None,
) -> Tensor:
    """Denoise ``noise`` [B, C, h, w] into scaled latents (fp32) on the transformer's device.

    ``init_latents`` (scaled) start an img2img run at ``settings.strength``; ``generator`` (CPU)
    draws the noise that stochastic samplers add between steps; ``uncond`` is required when
    ``settings.guided``. ``image_size`` (height, width in pixels) feeds the micro-conditions; it
    defaults to the latent size times the downscale of the VAE the model pairs with. ``on_step`` may
    raise to stop the run (the host's cancel button).
    """
    device = transformer.device
    batch = noise.shape[0]
    if image_size is None:
        downscale = vae_defaults_for(transformer.config).downscale
        image_size = (noise.shape[-2] * downscale, noise.shape[-1] * downscale)
    transformer.check_latent_size(*noise.shape[-2:])
    scheduler, timesteps = make_scheduler(settings, device)
    if control is not None:
        control.check_batch(batch)
    caption = _for_batch(cond, batch)
    if settings.guided:
        if uncond is None:
            raise InputError(f"guidance {settings.guidance} needs an unconditional caption (a negative prompt)")
        uncond = _for_batch(uncond, batch)
        caption = TextEmbedding.batched([uncond.to(device, caption.embeddings.dtype), caption.to(device)])
    caption = caption.to(device)
    noise = noise.to(device, torch.float32)
    if init_latents is not None and settings.strength < 1.0:
        start = timesteps[:1].repeat(batch)
        latents = scheduler.add_noise(init_latents.to(device, torch.float32), noise, start)
    else:
        latents = noise * scheduler.init_noise_sigma
    step_options = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for index, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(latents, t)
        if settings.guided:
            model_input = torch.cat([model_input, model_input])
        hook = control.hook if control is not None and control.active(index, len(timesteps)) else None
        with torch.no_grad():
            out = transformer(model_input, t.reshape(1), caption.embeddings, caption.mask, image_size, hook)
        eps = out[:, : transformer.config.in_channels].float()  # learned sigma: keep the noise half
        if settings.guided:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + settings.guidance * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, return_dict=False, **step_options)[0]
        if on_step is not None:
            on_step(index + 1, len(timesteps), latents)
    return latents


def initial_noise(
    batch: int, height: int, width: int, seed: int, channels: int = SD_VAE.latent_channels
) -> tuple[Tensor, torch.Generator]:
    """Noise [B, C, h, w] (fp32, CPU) from ``seed``, and the generator to keep drawing from; C defaults to the
    latent channels of the SD and SDXL VAEs."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(batch, channels, height, width, generator=generator), generator


def generate_latents(
    transformer: PixArtTransformer,
    cond: TextEmbedding,
    settings: SamplingSettings,
    *,
    seed: int,
    batch: int,
    height: int,
    width: int,
    uncond: TextEmbedding | None = None,
    init_latents: Tensor | None = None,
    control: ControlSchedule | None = None,
    image_size: tuple[int, int] | None = None,
    on_step: StepCallback | None = None,
) -> Tensor:
    """Text (and optionally an image) to scaled latents [B, C, height, width]: noise from ``seed``,
    the reference null caption as the unconditional input when guidance has no negative prompt.
    """
    if settings.guided and uncond is None:
        uncond = null_caption(transformer, cond)
    if init_latents is not None and init_latents.shape[0] not in (1, batch):
        raise InputError(f"{init_latents.shape[0]} init latents cannot start a batch of {batch}")
    noise, generator = initial_noise(batch, height, width, seed, transformer.config.in_channels)
    if init_latents is not None:
        init_latents = init_latents.expand(batch, -1, -1, -1)
    return sample(
        transformer,
        cond,
        settings,
        noise,
        uncond=uncond,
        init_latents=init_latents,
        generator=generator,
        image_size=image_size,
        control=control,
        on_step=on_step,
    )
