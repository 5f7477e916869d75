"""Autoencoder training: a TAESD-architecture autoencoder (diffusers' ``AutoencoderTiny``) on a data set's pictures.

The embedded model's world has no pretrained VAE, so it gets its own, trained here. Each step reconstructs
random crops with an L1 + L2 loss, with Gaussian noise added to the latents so the decoder tolerates a
generator's small errors. Crops are aligned to the 8 px latent grid (the layers are convolutions, so crops
train the same weights at a fraction of the cost of whole pictures) and drawn with a probability that grows
with how much their pixels vary, so flat backgrounds do not crowd out the pictures' content. The result is
saved in ComfyUI's single-file TAESD layout (``vae/taesd_layout.py``), with ``vae_scale`` and ``vae_shift``
chosen so that the scaled latents the transformer works in (raw latents x ``autoencoder.scaling_factor``)
have zero mean and a standard deviation of ``autoencoder.latent_std`` (1 unless set) over the data set. With
``autoencoder.train_encoder = false`` an existing TAESD file's decoder alone learns: its latents, their scale
and shift, and so every transformer trained on them, stay as they are (unless ``latent_std`` is set: then
the scale and shift are measured anew), while its pictures get sharper.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..errors import InputError
from ..pipeline.images import from_pil, resize_and_crop
from ..vae.taesd_config import TaesdConfig
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
    weights: Tensor  # [B, rows, columns] how likely each 8 px-aligned crop position is to be drawn

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (TAESD_KWARGS["latent_channels"], self.crop // DOWNSCALE, self.crop // DOWNSCALE)

    def to(self, device: torch.device | str) -> PixelBatch:
        return replace(self, pixels=self.pixels.to(device), weights=self.weights.to(device))

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
                pixels = resize_and_crop(from_pil(image), resolution, resolution, antialias=True)
            pictures.append(((pixels[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
        self.pixels = torch.stack(pictures)  # [N, 3, S, S]
        self.resolution, self.crop = resolution, crop
        self.weights = crop_weights(self.pixels, crop)
        self.folder: Path | None = None  # no feature cache: nothing is encoded ahead

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [(self.resolution, self.resolution)] * self.pixels.shape[0]

    def batch(self, indices: list[int]) -> PixelBatch:
        return PixelBatch(self.pixels[indices], (self.resolution, self.resolution), self.crop, self.weights[indices])


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

    def __init__(
        self,
        model: AutoencoderTiny,
        data: PixelData,
        settings: AutoencoderSection,
        convention: TaesdConfig | None = None,
    ) -> None:
        """``convention``: the file being continued; with a frozen encoder and no ``latent_std`` its
        ``vae_scale`` and ``vae_shift`` are kept (the latents do not change), else they are measured anew when
        saving."""
        self.reconstruction = Reconstruction(model)
        self.data, self.settings = data, settings
        self.kept = convention if keeps_convention(settings) else None

    @property
    def module(self) -> nn.Module:
        return self.reconstruction

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.reconstruction.parameters() if p.requires_grad]

    def loss(self, module: nn.Module, batch: PixelBatch, draws: Draws) -> Tensor:
        images = crops(to_signed(batch.pixels), batch.weights, draws.crop[:, 0], batch.crop)
        error = module(images, draws.noise * self.settings.latent_noise) - images
        return error.abs().mean() + error.pow(2).mean()

    def after_step(self) -> None:
        """Nothing to do after a step (no EMA)."""

    def state(self) -> dict[str, Tensor]:
        return {}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        """No state beyond the model and optimizer."""

    @torch.no_grad()
    def save(self, folder: Path, weights: Mapping[str, Tensor] | None = None) -> Path:
        """The autoencoder in ComfyUI's TAESD layout, with the latent scale and shift of the data set
        (``weights``, the loop's gathered state dict, is not needed: autoencoder runs are never sharded)."""
        model = self.reconstruction.model
        if self.kept is not None:
            scale, shift = self.kept.vae_scale, self.kept.vae_shift
        else:
            device = next(model.parameters()).device
            pictures = self.data.pixels[:STATISTICS_RECORDS]
            latents = torch.cat([model.encoder(to_signed(p[None]).to(device)).float() for p in pictures])
            mean, std = latents.mean().item(), latents.std().item()
            factor, spread = self.settings.scaling_factor, self.settings.latent_std or 1.0
            scale, shift = factor * std / spread, -spread * mean / (std * factor)
        path = folder / "autoencoder.safetensors"
        tensors = comfy_taesd_state_dict(model, vae_scale=scale, vae_shift=shift)
        save_file({k: v.float().cpu().contiguous() for k, v in tensors.items()}, str(path))
        return path


CONTENT_FLOOR = 0.01  # a flat crop's weight, beside its pixels' standard deviation (in [0, 1] units)


def crop_weights(pixels: Tensor, side: int) -> Tensor:
    """[N, rows, columns]: for each picture [N, 3, S, S] uint8 and each 8 px-aligned ``side`` px crop, the
    standard deviation of its pixels plus ``CONTENT_FLOOR``."""
    weights = []
    for part in pixels.split(256):
        unit = part.float() / 255
        mean = torch.nn.functional.avg_pool2d(unit, side, stride=DOWNSCALE)
        square = torch.nn.functional.avg_pool2d(unit.square(), side, stride=DOWNSCALE)
        weights.append((square - mean.square()).clamp(min=0).sqrt().mean(dim=1) + CONTENT_FLOOR)
    return torch.cat(weights)


def crops(images: Tensor, weights: Tensor, where: Tensor, side: int) -> Tensor:
    """A ``side`` px square of each image [B, 3, H, W] at an 8 px-aligned position drawn from ``weights``
    [B, rows, columns] by the uniform numbers ``where`` [B] in [0, 1) (inverse of the cumulative weights)."""
    columns = weights.shape[-1]
    cumulative = weights.flatten(1).cumsum(1)
    target = (where * cumulative[:, -1])[:, None].to(cumulative)
    chosen = torch.searchsorted(cumulative, target).squeeze(1).clamp(max=cumulative.shape[1] - 1).tolist()
    return torch.stack(
        [
            image[:, (c // columns) * DOWNSCALE : (c // columns) * DOWNSCALE + side,
                  (c % columns) * DOWNSCALE : (c % columns) * DOWNSCALE + side]
            for image, c in zip(images, chosen, strict=True)
        ]
    )  # fmt: skip


def autoencoder_to_train(
    vae: Path | None, settings: AutoencoderSection, seed: int
) -> tuple[AutoencoderTiny, TaesdConfig | None]:
    """The autoencoder a run starts from, its parameters' ``requires_grad`` set to what learns: ``vae`` (a TAESD
    file, with its latent convention; where the file has no ``vae_scale``/``vae_shift``, as madebyollin's
    files, the family's ``settings.scaling_factor`` and 0 stand in, as the engine reads it) or a new one from
    ``seed`` (``new_autoencoder``, no convention yet).

    Raises ``InputError`` when ``vae`` is not a TAESD with an encoder (a KL VAE, a decoder-only file), or when
    decoder training would ignore ``settings.scaling_factor`` (the file has its own scale and shift)."""
    if vae is None:
        return new_autoencoder(seed), None
    from ..vae.autoencoder import TaesdVae, load_vae
    from ..vae.vae_config import SD_VAE

    loaded = load_vae(vae, defaults=replace(SD_VAE, scaling_factor=settings.scaling_factor))
    if not isinstance(loaded, TaesdVae) or loaded.model.encoder is None:
        found = "a decoder-only TAESD" if isinstance(loaded, TaesdVae) else "a KL VAE"
        raise InputError(f"autoencoder training continues a TAESD file with its encoder; model.vae {vae} is {found}")
    default = AutoencoderSection.scaling_factor
    if keeps_convention(settings) and loaded.config.scale_in_file and settings.scaling_factor != default:
        raise InputError(
            f"autoencoder.scaling_factor {settings.scaling_factor!r} would be ignored: decoder training keeps the "
            f"vae_scale and vae_shift in model.vae {vae}; drop it"
        )
    model = loaded.model.requires_grad_(True)
    model.encoder.requires_grad_(settings.train_encoder)
    return model, loaded.config


def keeps_convention(settings: AutoencoderSection) -> bool:
    """Whether a run continuing a file keeps its ``vae_scale``/``vae_shift``: a frozen encoder, latent spread
    not asked for."""
    return not settings.train_encoder and settings.latent_std is None


def new_autoencoder(seed: int) -> AutoencoderTiny:
    """A TAESD-architecture autoencoder from ``seed``: diffusers' initialisation, except that the last
    convolution of every residual block starts at zero, so each block starts as the identity and the whole
    starts as a shallow convolutional network (the zero-initialised residual of Goyal et al. 2017, "Accurate,
    Large Minibatch SGD", §5.1). With diffusers' initialisation alone the 22 ReLU blocks learn the world's
    colours only after many more steps than a CPU run affords."""
    from diffusers import AutoencoderTiny
    from diffusers.models.autoencoders.vae import AutoencoderTinyBlock

    torch.manual_seed(seed)
    model = AutoencoderTiny(**TAESD_KWARGS)
    for block in model.modules():
        if isinstance(block, AutoencoderTinyBlock):
            nn.init.zeros_(block.conv[-1].weight)
            nn.init.zeros_(block.conv[-1].bias)
    return model
