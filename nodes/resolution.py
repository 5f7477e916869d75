"""The resolution node: the training size (aspect-ratio bin) nearest to the size the user asks for."""

from __future__ import annotations

import torch

from ..pixart_delta_core.pipeline.resolution import ASPECT_RATIO_BINS, MAX_SIDE, nearest_bin
from ..pixart_delta_core.vae.vae_config import SD_VAE
from . import host

RESOLUTIONS = ("1024", "512", "256", "2048")  # training resolutions with bins, the common one first


class Resolution:
    """Snaps a wished-for size to the nearest aspect-ratio bin PixArt was trained on, and makes the empty LATENT."""

    DESCRIPTION = (
        "PixArt was trained on a fixed set of sizes per aspect ratio (bins). This picks the bin whose aspect ratio "
        "is nearest to width/height at the model's training resolution (as the reference app does) and outputs "
        "its size and an empty LATENT for the PixArt-δ sampler. Resize or crop the decoded image afterwards to get "
        "exactly the size you asked for."
    )
    CATEGORY = "PixArt-δ/sampling"
    FUNCTION = "pick"
    RETURN_TYPES = ("INT", "INT", "LATENT")
    RETURN_NAMES = ("width", "height", "latent")
    OUTPUT_TOOLTIPS = (
        "Width of the nearest bin, in pixels.",
        "Height of the nearest bin, in pixels.",
        "An empty latent of that size and batch, for the sampler's latent_image.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        side = {"min": 16, "max": MAX_SIDE, "step": 8}
        return {
            "required": {
                "width": ("INT", {"default": 1024, **side, "tooltip": "Wished-for width; only its ratio counts."}),
                "height": ("INT", {"default": 1024, **side, "tooltip": "Wished-for height; only its ratio counts."}),
                "resolution": (
                    list(RESOLUTIONS),
                    {
                        "default": "1024",
                        "tooltip": "The model's training resolution: 1024 for the -1024-MS models and PixArt-δ LCM, "
                        "512 or 256 for PixArt-XL-2-512x512 / 256x256, 2048 for PixArt-Σ 2K.",
                    },
                ),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Images per run."}),
            }
        }

    def pick(self, width: int, height: int, resolution: str = "1024", batch_size: int = 1) -> tuple:
        bin_height, bin_width = nearest_bin(height, width, ASPECT_RATIO_BINS[int(resolution)])
        # No model at hand: the SD VAE's latents, which PixArt-Σ's SDXL VAE shares (same channels, same downscale).
        shape = (batch_size, SD_VAE.latent_channels, bin_height // SD_VAE.downscale, bin_width // SD_VAE.downscale)
        latent = torch.zeros(shape, dtype=torch.float32, device=host.intermediate_device())
        return (bin_width, bin_height, {"samples": latent})
