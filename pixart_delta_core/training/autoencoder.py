"""Autoencoder training: a TAESD-architecture autoencoder (diffusers' ``AutoencoderTiny``) on a data set's pictures.

The embedded model's world has no pretrained VAE, so it gets its own, trained here. Each step reconstructs
random crops (aligned to the 8 px latent grid: the layers are convolutions, so crops train the same weights
at a fraction of the cost of whole pictures) with an L1 + L2 loss, with Gaussian noise added to the latents
so the decoder tolerates a generator's small errors. It is saved in ComfyUI's single-file TAESD layout
(``vae/taesd_layout.py``), with ``vae_scale`` and ``vae_shift`` chosen so that the scaled latents the
transformer works in (raw latents x ``autoencoder.scaling_factor``) have zero mean and unit standard deviation
over the data set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..errors import InputError
from ..pipeline.images import from_pil, resize_and_crop
from ..vae.taesd_layout import TAESD_KWARGS, comfy_taesd_state_dict
from .config import AutoencoderSection
from .data import Record
from .draws import Draws

if TYPE_CHECKING:
    from diffusers import AutoencoderTiny

STATISTICS_RECORDS = 64  # pictures encoded whole to measure the latents' mean and spread when saving
DOWNSCALE = 8  # TAESD's pixels per latent pixel


@dataclass(frozen=True)
class PixelBatch:
    """Pictures of one batch [B, 3, S, S] uint8, and the side of the crops trained on."""

    pixels: Tensor
    size: tuple[int, int]
    crop: int

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (TAESD_KWARGS["latent_channels"], self.crop // DOWNSCALE, self.crop // DOWNSCALE)

    def to(self, device: torch.device | str) -> PixelBatch:
        return replace(self, pixels=self.pixels.to(device))

    def __len__(self) -> int:
        return self.pixels.shape[0]


class PixelData:
    """Every picture of a data set at ``resolution`` px (centre square), held in memory as uint8."""

    def __init__(self, records: list[Record], resolution: int, crop: int) -> None:
        if resolution % DOWNSCALE or crop % DOWNSCALE or not DOWNSCALE <= crop <= resolution:
            raise InputError(
                f"autoencoder.crop_size must be a multiple of {DOWNSCALE} px up to data.resolution ({resolution} px) "
                f"and data.resolution a multiple of {DOWNSCALE}, found crop {crop} px"
            )
        from PIL import Image

        pictures = []
        for record in records:
            with Image.open(record.image) as image:
                pixels = resize_and_crop(from_pil(image.convert("RGB")), resolution, resolution, antialias=True)
            pictures.append(((pixels[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
        self.pixels = torch.stack(pictures)  # [N, 3, S, S]
        self.resolution, self.crop = resolution, crop
        self.folder: Path | None = None  # no feature cache: nothing is encoded ahead

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [(self.resolution, self.resolution)] * self.pixels.shape[0]

    def batch(self, indices: list[int]) -> PixelBatch:
        return PixelBatch(self.pixels[indices], (self.resolution, self.resolution), self.crop)


def to_signed(pixels: Tensor) -> Tensor:
    """uint8 pictures -> float in [-1, 1]."""
    return pixels.float() / 127.5 - 1


class Reconstruction(nn.Module):
    """Encode, add latent noise, decode: the module DDP wraps."""

    def __init__(self, model: AutoencoderTiny) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, latent_noise: Tensor) -> Tensor:
        """``images`` [B, 3, H, W] in [-1, 1] -> reconstructions, same shape and range."""
        latents = self.model.encoder(images)
        return self.model.decoder(latents + latent_noise)


class AutoencoderTrainer:
    """The strategy of ``train autoencoder``: the loop's trainer interface around an ``AutoencoderTiny``."""

    def __init__(self, model: AutoencoderTiny, data: PixelData, settings: AutoencoderSection) -> None:
        self.reconstruction = Reconstruction(model)
        self.data, self.settings = data, settings

    @property
    def module(self) -> nn.Module:
        return self.reconstruction

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.reconstruction.parameters())

    def loss(self, module: nn.Module, batch: PixelBatch, draws: Draws) -> Tensor:
        images = crops(to_signed(batch.pixels), draws.crop, batch.crop)
        error = module(images, draws.noise * self.settings.latent_noise) - images
        return error.abs().mean() + error.pow(2).mean()

    def after_step(self) -> None:
        """Nothing to do after a step (no EMA)."""

    def state(self) -> dict[str, Tensor]:
        return {}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        """No state beyond the model and optimizer."""

    @torch.no_grad()
    def save(self, folder: Path) -> Path:
        """The autoencoder in ComfyUI's TAESD layout, with the latent scale and shift of the data set."""
        model = self.reconstruction.model
        device = next(model.parameters()).device
        latents = torch.cat(
            [model.encoder(to_signed(p[None]).to(device)).float() for p in self.data.pixels[:STATISTICS_RECORDS]]
        )
        mean, std = latents.mean().item(), latents.std().item()
        factor = self.settings.scaling_factor
        path = folder / "autoencoder.safetensors"
        tensors = comfy_taesd_state_dict(model, vae_scale=factor * std, vae_shift=-mean / (std * factor))
        save_file({k: v.float().cpu().contiguous() for k, v in tensors.items()}, str(path))
        return path


def crops(images: Tensor, where: Tensor, side: int) -> Tensor:
    """A ``side`` px square of each image [B, 3, H, W], at the 8 px-aligned offset ``where`` [B, 2] in [0, 1) picks."""
    height, width = images.shape[-2:]
    slots = torch.tensor([(height - side) // DOWNSCALE + 1, (width - side) // DOWNSCALE + 1], device=where.device)
    offsets = ((where * slots).long() * DOWNSCALE).tolist()
    return torch.stack([image[:, y : y + side, x : x + side] for image, (y, x) in zip(images, offsets, strict=True)])


def new_autoencoder(seed: int) -> AutoencoderTiny:
    """A TAESD-architecture autoencoder with diffusers' initialisation, from ``seed``."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(**TAESD_KWARGS)
