"""The sampler node: LCM (PixArt-δ) and the classic solvers, text-to-image, image-to-image and ControlNet.

LATENT in and out is in the VAE's raw space, as everywhere in ComfyUI: an incoming non-empty latent
is multiplied by the VAE scaling factor (an all-zero latent counts as empty, as in core samplers)
and the result is divided by it, so core VAEDecode decodes it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..pixart_delta_core.errors import InputError
from ..pixart_delta_core.models.transformer_config import vae_defaults_for
from ..pixart_delta_core.pipeline.arguments import (
    MAX_SEED,
    check_batch,
    check_seed,
    check_steps,
    check_tensor,
)
from ..pixart_delta_core.pipeline.distillation import warn_unsuited_sampler
from ..pixart_delta_core.pipeline.resolution import MAX_SIDE, check_image_size
from ..pixart_delta_core.sampling.choices import LcmTimesteps, Sampler
from ..pixart_delta_core.sampling.samplers import SAMPLERS, SamplingSettings, generate_latents, parse_sampler
from . import host
from .conditioning import caption_from, control_from, image_size_from
from .sockets import MODEL_TYPE, PixArtModel

log = logging.getLogger(__name__)

# Working memory asked of ComfyUI per latent pixel and batch item, in bytes per weight byte: the same
# rule of thumb ComfyUI applies to its own PixArt models (0.01 x memory factor 0.5 MiB).
_WORK_BYTES_PER_AREA = 0.005 * 2**20


def _reference_settings() -> str:
    return "; ".join(f"{s.value}: {SAMPLERS[s].steps} steps, guidance {SAMPLERS[s].guidance:g}" for s in Sampler)


class PixArtSampler:
    """Denoises with a PixArt transformer: LCM in 2-4 steps or a classic solver with guidance."""

    DESCRIPTION = (
        "Generates latents with a PixArt transformer. LCM (the PixArt-δ LCM model) makes an image in 2-4 steps "
        "without guidance; the classic samplers run the base models with classifier-free guidance. Without a "
        "latent_image it makes width x height; with one from VAEEncode and denoise below 1 it changes that image. "
        "A ControlNet attached by PixArt-δ Apply ControlNet steers it. The LATENT out decodes with core VAEDecode."
    )
    CATEGORY = "PixArt-δ/sampling"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent (raw VAE space): decode it with VAEDecode and the model's VAE.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        side = {"min": 16, "max": MAX_SIDE, "step": 16}
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "The transformer from PixArt-δ Checkpoint Loader."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt (PixArt-δ T5 Text Encode, core CLIPTextEncode)."}),
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": MAX_SEED,
                        "control_after_generate": True,
                        "tooltip": "The noise seed: the same seed gives the same image on every device.",
                    },
                ),
                "steps": (
                    "INT",
                    {"default": 4, "min": 1, "max": 1000, "tooltip": f"Steps. Reference: {_reference_settings()}."},
                ),
                "sampler": (
                    [s.value for s in Sampler],
                    {
                        "default": Sampler.LCM.value,
                        "tooltip": "lcm for the PixArt-δ LCM model; dpm_solver++ (the reference for PixArt-α and the "
                        "ControlNet), sa_solver and the others for base models.",
                    },
                ),
                "guidance": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 100.0,
                        "step": 0.1,
                        "round": 0.01,
                        "tooltip": "Classifier-free guidance scale; 1 or below runs no guidance (one pass per step). "
                        "LCM: 0 (its guidance is distilled in); base models: 4.5.",
                    },
                ),
                "denoise": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.01,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Image-to-image strength, with a latent_image from VAEEncode: the image is noised "
                        "to this fraction of the schedule and the last int(steps x denoise) of the steps run (as "
                        "diffusers' img2img strength; core KSampler instead runs all steps of a longer schedule). "
                        "1.0: a new image.",
                    },
                ),
                "width": ("INT", {"default": 1024, **side, "tooltip": "Image width without a latent_image."}),
                "height": ("INT", {"default": 1024, **side, "tooltip": "Image height without a latent_image."}),
                "batch_size": (
                    "INT",
                    {"default": 1, "min": 1, "max": 64, "tooltip": "Images per run without a latent_image."},
                ),
            },
            "optional": {
                "negative": (
                    "CONDITIONING",
                    {
                        "tooltip": "Negative prompt for guidance above 1. Without one, the model's learned null "
                        "caption is used, as the reference does (LCM/diffusers-layout models have none)."
                    },
                ),
                "latent_image": (
                    "LATENT",
                    {
                        "tooltip": "A latent to start from: VAEEncode (image-to-image with denoise below 1), or an "
                        "empty one (PixArt-δ Resolution, EmptyLatentImage) that sets the size and batch."
                    },
                ),
                "lcm_timesteps": (
                    [t.value for t in LcmTimesteps],
                    {
                        "default": LcmTimesteps.REFERENCE.value,
                        "advanced": True,
                        "tooltip": "Which timesteps LCM visits: the reference code's (4 steps: 999, 759, 519, 279) or "
                        "diffusers' LCMScheduler's (999, 759, 499, 259).",
                    },
                ),
                "low_memory": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Take the transformer (and ControlNet) off the GPU as soon as sampling ends, "
                        "through ComfyUI's model management, so the VAE decodes with the memory to itself; decode "
                        "with core VAE Decode (Tiled). With low_memory on in T5 Text Encode too, one model is on the "
                        "GPU at a time: the paper's recipe for 1024 px images on an 8 GB GPU.",
                    },
                ),
            },
        }

    def sample(
        self,
        model: PixArtModel,
        positive: list,
        seed: int,
        steps: int,
        sampler: str,
        guidance: float,
        denoise: float,
        width: int = 1024,
        height: int = 1024,
        batch_size: int = 1,
        negative: list | None = None,
        latent_image: dict | None = None,
        lcm_timesteps: str = LcmTimesteps.REFERENCE.value,
        low_memory: bool = False,
    ) -> tuple[dict]:
        transformer = model.transformer
        config = transformer.config
        seed, steps = check_seed(seed), check_steps(steps)
        settings = SamplingSettings(parse_sampler(sampler), steps, guidance, denoise, LcmTimesteps(lcm_timesteps))
        cond = caption_from(positive, config, "positive")
        uncond = None
        if settings.guided:
            if negative is not None:
                uncond = caption_from(negative, config, "negative")
            elif not config.null_caption:
                raise InputError(
                    f"guidance {guidance:g} needs an unconditional caption and this model has no learned null "
                    f"caption (diffusers-layout weights do not carry one): connect a negative conditioning (an empty "
                    f"prompt works) or set guidance to 1 or below"
                )
        warn_unsuited_sampler(settings, model.embedded)  # guidance on a distilled model, few steps on the teacher
        vae = vae_defaults_for(config)
        scale = vae.scaling_factor
        batch, latent_height, latent_width, init = _start(
            latent_image, width, height, batch_size, config.in_channels, vae.downscale
        )
        if init is not None:
            init = init * scale  # raw (VAEEncode) -> the transformer's scaled space
        elif denoise < 1.0:
            raise InputError(
                f"denoise {denoise:g} changes an existing image: connect a latent_image from VAEEncode, or set "
                f"denoise to 1 for a new image"
            )
        pixels = (latent_height * vae.downscale, latent_width * vae.downscale)
        check_batch(batch, *pixels)
        control_image = control_from(positive, negative)
        if control_image is not None:
            check_tensor("control image", control_image.image, ndims=(4,))
        control_latent = control_image.latent(*pixels, scale) if control_image is not None else None
        managed = [model.managed] + ([control_image.controlnet.managed] if control_image is not None else [])
        work = batch * (2 if settings.guided else 1) * latent_height * latent_width * len(managed)
        host.load_models(managed, memory_required=int(work * transformer.dtype.itemsize * _WORK_BYTES_PER_AREA))
        control = control_image.schedule(transformer, control_latent) if control_image is not None else None
        progress = host.Progress(settings.steps_run)
        log.info(
            "PixArt-δ sampler: %s, %d of %d steps, guidance %g, %dx%d px, batch %d%s",
            sampler,
            settings.steps_run,
            steps,
            guidance,
            pixels[1],
            pixels[0],
            batch,
            ", with ControlNet" if control is not None else "",
        )
        try:
            latents = generate_latents(
                transformer,
                cond,
                settings,
                seed=seed,
                batch=batch,
                height=latent_height,
                width=latent_width,
                uncond=uncond,
                init_latents=init,
                control=control,
                image_size=image_size_from(positive) or pixels,
                on_step=progress.on_step,
            )
        finally:
            if low_memory:  # also when cancelled: the models leave the GPU either way
                host.unload(managed)
        raw = (latents / scale).to(host.intermediate_device())  # scaled -> raw VAE space
        out = {k: v for k, v in (latent_image or {}).items() if k not in ("samples", "noise_mask")}
        out["samples"] = raw
        return (out,)


def _start(
    latent: dict | None, width: int, height: int, batch: int, channels: int, downscale: int
) -> tuple[int, int, int, torch.Tensor | None]:
    """(batch, latent height, latent width, raw init latents or None) from the LATENT input or the size widgets
    (pixels over the VAE's ``downscale``)."""
    if latent is None:
        check_image_size(height, width)
        return batch, height // downscale, width // downscale, None
    samples: Any = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or samples.shape[1] != channels:
        found = list(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise InputError(f"latent_image must hold samples [batch, {channels}, height, width], found {found}")
    if latent.get("noise_mask") is not None:
        raise InputError(
            "latent_image has a noise mask (inpainting): the PixArt-δ sampler does not inpaint; use VAEEncode, "
            "not VAEEncodeForInpaint or SetLatentNoiseMask"
        )
    check_tensor("latent_image samples", samples, ndims=(4,))
    b, _, h, w = samples.shape
    return b, h, w, samples.float() if torch.count_nonzero(samples) > 0 else None
