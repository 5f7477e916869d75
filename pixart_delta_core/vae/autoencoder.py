"""The VAE between images and latents (docs/REFERENCE.md §1): diffusers' ``AutoencoderKL`` (the SD/SDXL VAE) or
``AutoencoderTiny`` (TAESD, ``taesd_config``), loaded strictly, behind one ``Vae`` interface.

Two latent spaces, kept apart in every name: **raw** latents are what the VAE encodes and decodes
(ComfyUI's LATENT holds these); **scaled** latents (raw x scaling factor) are what the transformer
and the samplers work in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoints.detection import DetectedCheckpoint
from ..checkpoints.files import folder_config
from ..checkpoints.hints import check_names, settle
from ..checkpoints.loading import as_source, load_strict
from ..checkpoints.sources import TensorSource
from ..devices import parse_dtype
from ..errors import InputError
from .taesd_config import TaesdConfig, check_scale_hints, detect_taesd, is_taesd
from .taesd_layout import TAESD_KWARGS
from .vae_config import SD_VAE, VaeConfig, detect_vae

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, AutoencoderTiny

log = logging.getLogger(__name__)

DECODER_ONLY = (
    "holds only its decoder: encoding an image (image-to-image, a ControlNet image, a training cache) needs its "
    "encoder too (taesd_encoder.* tensors, or taesd_encoder.safetensors beside taesd_decoder.safetensors)"
)
TILE_SIZE = 512  # pixels per side of one decoded tile (64 latents for the SD VAE)
TILE_ABOVE_PIXELS = 2048 * 1024  # automatic tiling above 2 megapixels (every α/δ bin is at most 1 megapixel)


class Vae:
    """An autoencoder: images in [-1, 1] <-> raw latents, one image at a time, outputs in float32.

    This class runs the SD/SDXL KL VAE; ``TaesdVae`` runs TAESD behind the same methods. ``load_vae`` gives either.
    """

    def __init__(
        self,
        model: AutoencoderKL,
        config: VaeConfig,
        tile_size: int = TILE_SIZE,
        tile_above_pixels: int = TILE_ABOVE_PIXELS,
    ) -> None:
        if tile_size % config.downscale:
            raise InputError(f"tile size {tile_size} px must be a multiple of the VAE's {config.downscale} px")
        self.model = model
        self.config = config
        self.tile_above_pixels = tile_above_pixels
        model.tile_sample_min_size = tile_size
        model.tile_latent_min_size = tile_size // config.downscale

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: str | torch.dtype | None = None) -> Vae:
        """Move the weights in place (fp16 becomes fp32 where the VAE overflows in fp16); returns ``self``."""
        self.model.to(device=device, dtype=None if dtype is None else storage_dtype(parse_dtype(dtype), self.config))
        return self

    def scale(self, raw_latents: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents -> the scaled latents the transformer works in."""
        return raw_latents * self.scaling_factor

    def unscale(self, scaled_latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (the transformer's) -> raw VAE latents."""
        return scaled_latents / self.scaling_factor

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False
    ) -> torch.Tensor:
        """Images [B,3,H,W] in [-1, 1] -> raw latents [B,4,H/8,W/8]: the posterior mean, or a sample of it.

        Sampling draws its noise on the CPU (from ``generator`` if given), so a seed gives the same
        latents on every device.
        """
        self._check(images, self.config.in_channels, self.config.downscale, "images")
        if generator is not None and generator.device.type != "cpu":
            raise InputError(f"the sampling generator must be a CPU generator, found one on {generator.device}")
        b, _, h, w = images.shape
        shape = (b, self.config.latent_channels, h // self.config.downscale, w // self.config.downscale)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32) if sample else None
        out = []
        for i in range(b):
            mean, std = self._moments(images[i : i + 1])  # [1,4,h,w] each, fp32 on the VAE's device
            out.append(mean if noise is None else mean + std * noise[i : i + 1].to(mean.device))
        return torch.cat(out)

    @torch.no_grad()
    def posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image [1,3,H,W] in [-1, 1] -> the posterior's mean and std, raw latents [4,H/8,W/8] fp32 on the CPU.

        The std is all zeros for a deterministic autoencoder (TAESD). Raises InputError for another shape.
        """
        self._check(pixels, self.config.in_channels, self.config.downscale, "pixels")
        if pixels.shape[0] != 1:
            raise InputError(f"expected one image [1, 3, height, width], found a batch of {pixels.shape[0]}")
        mean, std = self._moments(pixels)
        return mean[0].cpu(), std[0].cpu()

    def _moments(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image [1,3,H,W] -> the posterior's mean and std [1,4,h,w] (raw latents, fp32, on the VAE's device)."""
        posterior = self.model.encode(image.to(self.device, self.dtype)).latent_dist
        return posterior.mean.float(), posterior.std.float()

    @torch.no_grad()
    def decode(self, raw_latents: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
        """Raw latents [B,4,h,w] -> images [B,3,8h,8w], nominally in [-1, 1] (not clamped).

        ``tiled``: decode in overlapping, blended tiles (less memory, slightly different pixels);
        ``None`` tiles images above ``tile_above_pixels`` and falls back to tiles when memory runs out.
        """
        self._check(raw_latents, self.config.latent_channels, 1, "raw latents")
        if tiled is None:
            pixels = raw_latents.shape[2] * raw_latents.shape[3] * self.config.downscale**2
            if pixels > self.tile_above_pixels:
                tiled = True
            else:
                try:
                    return self._decode(raw_latents, tiled=False)
                except torch.cuda.OutOfMemoryError:
                    log.warning("out of memory decoding %s latents at once: decoding in tiles", list(raw_latents.shape))
                    tiled = True
        return self._decode(raw_latents, tiled)

    def _decode(self, raw_latents: torch.Tensor, tiled: bool) -> torch.Tensor:
        out = []
        for z in raw_latents.to(self.device, self.dtype).split(1):  # [1,4,h,w]
            image = self.model.tiled_decode(z, return_dict=False)[0] if tiled else self.model.decode(z).sample
            out.append(image.float())  # [1,3,8h,8w]
        return torch.cat(out)

    @staticmethod
    def _check(tensor: torch.Tensor, channels: int, multiple: int, what: str) -> None:
        if tensor.ndim != 4 or tensor.shape[1] != channels:
            raise InputError(f"expected {what} shaped [batch, {channels}, height, width], found {list(tensor.shape)}")
        if tensor.shape[2] % multiple or tensor.shape[3] % multiple:
            raise InputError(f"{what} sides must be multiples of {multiple} px, found {list(tensor.shape[2:])}")


class TaesdVae(Vae):
    """TAESD (diffusers' ``AutoencoderTiny``) behind the ``Vae`` methods, in ComfyUI's latent convention: raw
    latent = encoder(image) / vae_scale + vae_shift, image = decoder((raw - vae_shift) x vae_scale) (``taesd_config``).

    TAESD is deterministic: ``posterior`` gives a std of zeros and ``encode(sample=True)`` gives the mean.
    ``decode`` always decodes whole images and ignores ``tiled``: TAESD's largest activations, 64 channels at the
    image's full size, take 0.25 GiB in fp32 for a 1024 px image, far below what the KL VAE's tiles save.
    """

    def __init__(self, model: AutoencoderTiny, config: TaesdConfig) -> None:
        self.model = model
        self.config = config  # type: ignore[assignment]  # the same fields Vae reads of a VaeConfig

    def _moments(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.model.encoder is None:
            raise InputError(f"this TAESD {DECODER_ONLY}")
        latent = self.model.encode(image.to(self.device, self.dtype)).latents.float()  # [1,4,h,w]
        raw = latent / self.config.vae_scale + self.config.vae_shift
        return raw, torch.zeros_like(raw)

    @torch.no_grad()
    def decode(self, raw_latents: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
        """Raw latents [B,4,h,w] -> images [B,3,8h,8w], nominally in [-1, 1] (not clamped); ``tiled`` is ignored."""
        self._check(raw_latents, self.config.latent_channels, 1, "raw latents")
        out = []
        for z in raw_latents.split(1):  # [1,4,h,w]
            z = ((z.float() - self.config.vae_shift) * self.config.vae_scale).to(self.device, self.dtype)
            out.append(self.model.decode(z).sample.float())  # [1,3,8h,8w]
        return torch.cat(out)


def storage_dtype(requested: torch.dtype, config: VaeConfig | TaesdConfig) -> torch.dtype:
    """The dtype the weights are held in: fp32 instead of fp16 for a VAE that overflows in fp16."""
    if requested == torch.float16 and config.force_upcast:
        log.info("this VAE overflows in fp16 (force_upcast): keeping its weights in fp32")
        return torch.float32
    return requested


def inspect_vae(
    checkpoint: str | Path | TensorSource | Mapping[str, torch.Tensor],
    defaults: VaeConfig = SD_VAE,
    hints: Mapping[str, Any] | None = None,
) -> DetectedCheckpoint[VaeConfig] | DetectedCheckpoint[TaesdConfig]:
    """Detect a VAE's layout and config without reading its weights (TAESD: but its two scalars).

    ``checkpoint``: an LDM or diffusers file, a whole SD checkpoint, a diffusers VAE folder or a
    pipeline folder (its ``vae/``); or TAESD: ComfyUI's single file, a ``taesd_decoder`` file (its
    ``taesd_encoder`` found beside it) or a diffusers ``AutoencoderTiny`` folder (see ``taesd_config``).
    ``defaults`` fill what the file does not say (``SD_VAE`` for PixArt-α/δ, ``SDXL_VAE`` for Σ: see
    ``vae_defaults_for``); ``hints`` are diffusers config fields, for what the file does not say: one that its
    config.json or its weights' shapes contradict, or of a name the kind does not take (``VaeConfig.hint_names``,
    ``TaesdConfig.hint_names``), is refused (``checkpoints/hints.py``), and for TAESD, in every layout, one that its
    fixed architecture contradicts (a ``scaling_factor`` other than 1.0 too: the family's is ``defaults``). Raises
    CheckpointError for anything else.
    """
    source = as_source(checkpoint, "VAE", "vae")  # a folder: a diffusers VAE's, or a pipeline's with its vae/
    taesd = is_taesd(source)
    kind = TaesdConfig if taesd else VaeConfig
    check_names(source.origin, hints or {}, kind.hint_names, "TAESD" if taesd else "an SD-style (KL) VAE")
    hints = {name: _listed(hint) for name, hint in (hints or {}).items()}
    if taesd:
        check_scale_hints(source.origin, hints)  # before config.json's 1.0 meets them: the message says where to go
    fields, hinted = _with_hints(source, hints)
    detected = detect_taesd(source, fields, defaults, hinted) if taesd else detect_vae(source, fields, defaults)
    for name in detected.config.from_shapes:  # detection reads these from the shapes, never from a hint
        said = _listed(getattr(detected.config, name))
        settle(source.origin, name, said, "the shape of its weights", hints.get(name), _given_as(name))
    return detected


def _with_hints(source: TensorSource, hints: Mapping[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
    """The folder's config.json fields, and the ``hints`` for those it does not give (``settle``: a hint that it
    contradicts raises CheckpointError naming both values); and the names of the fields a hint gave."""
    config = folder_config(source)
    hinted = frozenset(name for name, hint in hints.items() if hint is not None and config.get(name) is None)
    for name, hint in hints.items():
        config[name] = settle(source.origin, name, config.get(name), "its config.json", hint, _given_as(name))
    return config, hinted


def _listed(value: Any) -> Any:
    """A tuple as a list, as config.json holds it (block_out_channels), so the two compare equal; else as it is."""
    return list(value) if isinstance(value, tuple) else value


def _given_as(name: str) -> str:
    """How the hint ``name`` is given (the VAE takes hints in Python only)."""
    return f"hints={{{name!r}: ...}} of load_vae or inspect_vae"


def check_encodes(detected: DetectedCheckpoint[VaeConfig] | DetectedCheckpoint[TaesdConfig]) -> None:
    """Raise InputError when the VAE ``inspect_vae`` found cannot encode images (a TAESD decoder alone), from its
    keys only: the check a run that encodes an image makes before its long stages."""
    if isinstance(detected.config, TaesdConfig) and not detected.config.has_encoder:
        raise InputError(f"the VAE {detected.tensors.origin} {DECODER_ONLY}")


def load_vae(
    checkpoint: str | Path | TensorSource | Mapping[str, torch.Tensor],
    dtype: str | torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    defaults: VaeConfig = SD_VAE,
    hints: Mapping[str, Any] | None = None,
) -> Vae:
    """Load a VAE or TAESD from any supported layout, strictly, in ``dtype`` on ``device`` (see ``inspect_vae``)."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    detected = inspect_vae(checkpoint, defaults, hints)
    log.info("loading VAE: %s", detected.describe())
    config = detected.config
    with torch.device("meta"):
        model = (
            AutoencoderTiny(**TAESD_KWARGS)
            if isinstance(config, TaesdConfig)
            else AutoencoderKL(**config.diffusers_kwargs())
        )
    if isinstance(config, TaesdConfig) and not config.has_encoder:
        model.encoder = None  # a decoder-only file: nothing to load into it, and encoding is refused
    dtype = storage_dtype(parse_dtype(dtype), config)
    load_strict(model, detected.tensors, dtype, torch.device(device), ignore=detected.ignored)
    return TaesdVae(model, config) if isinstance(config, TaesdConfig) else Vae(model, config)
