"""ControlNet nodes (PixArt-δ's ControlNet-Transformer, docs/REFERENCE.md §4): the loader and the apply node.

The apply node leaves a ``ControlImage`` in the conditioning's dict (copies, never the input's own
dict). The control image can only be fitted to the generation size once that size is known, so the
sampler encodes it: resized and centre-cropped, through the core VAE (posterior mean), scaled.
"""

from __future__ import annotations

from typing import Any

import torch

from ..pixart_delta_core.checkpoints.files import open_checkpoint
from ..pixart_delta_core.errors import InputError
from ..pixart_delta_core.models.controlnet import ControlNetTransformer, inspect_controlnet, load_controlnet
from ..pixart_delta_core.models.transformer import PixArtTransformer
from ..pixart_delta_core.pipeline.images import prepare_image
from ..pixart_delta_core.sampling.samplers import ControlSchedule
from . import host
from .loaders import MODEL_TYPE, PixArtModel, parameter_count, placement
from .model_choices import CONTROLNETS
from .text import single_entry

CATEGORY = "PixArt-δ/controlnet"
CONTROLNET_TYPE = "PIXART_DELTA_CONTROLNET"
CONTROL_KEY = "pixart_delta_control"


class PixArtControlNet:
    """A loaded ControlNet-Transformer (the PIXART_DELTA_CONTROLNET type) and the model it was loaded for."""

    def __init__(self, controlnet: ControlNetTransformer, managed: host.ManagedModel, base: PixArtModel) -> None:
        self.controlnet = controlnet
        self.managed = managed
        self.base = base

    def __repr__(self) -> str:
        return f"PixArtControlNet({self.controlnet.config.describe()}, for {self.base.name!r})"


class ControlImage:
    """A ControlNet, its control image (IMAGE [B, H, W, C] in 0..1) and the VAE to encode it, with the
    strength and the fraction of the steps where it acts."""

    def __init__(
        self, controlnet: PixArtControlNet, image: torch.Tensor, vae: Any, strength: float, start: float, end: float
    ) -> None:
        self.controlnet = controlnet
        self.image = image
        self.vae = vae
        self.strength = strength
        self.start = start
        self.end = end

    def latent(self, height: int, width: int, scaling_factor: float) -> torch.Tensor:
        """The control latent for an image of ``height`` x ``width`` px: fitted, VAE-encoded (mean), scaled."""
        pixels = prepare_image(self.image.movedim(-1, 1), height, width)  # [B, 3, height, width] in [-1, 1]
        raw = self.vae.encode(((pixels + 1) / 2).movedim(1, -1))  # core VAE: IMAGE in 0..1 -> raw latents
        return raw.float() * scaling_factor  # [B, 4, height / 8, width / 8]

    def schedule(self, base: PixArtTransformer, latent: torch.Tensor) -> ControlSchedule:
        """The sampler's control for ``base`` (loaded on its device), from the control latent."""
        return ControlSchedule(self.controlnet.controlnet.hook(base, latent, self.strength), self.start, self.end)


def control_from(positive: Any, negative: Any | None) -> ControlImage | None:
    """The control the conditioning carries; the negative may carry the same one or none (both passes get it)."""
    control = single_entry(positive, "positive")[1].get(CONTROL_KEY)
    if negative is not None:
        other = single_entry(negative, "negative")[1].get(CONTROL_KEY)
        if other is not None and other is not control:
            raise InputError(
                "the negative carries a different ControlNet than the positive: PixArt-δ applies one control to "
                "both passes; apply it once with PixArt-δ Apply ControlNet, feeding both positive and negative"
            )
    return control


class ControlNetLoader:
    """Loads a PixArt-δ ControlNet-Transformer for a base model."""

    DESCRIPTION = (
        "Loads a PixArt-δ ControlNet-Transformer: the reference PixArt-XL-2-1024-ControlNet.pth / -512- (only its "
        "ControlNet part is read), a ControlNet-only file, or a diffusers-style adapter; from models/controlnet or "
        "models/checkpoints. It is checked against the model it will steer and loaded in the model's precision "
        "and quantization (a model loaded in 8 or 4 bits gets its ControlNet in the same); one that does not fit "
        "(width, heads, depth) is refused."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (CONTROLNET_TYPE,)
    RETURN_NAMES = ("controlnet",)
    OUTPUT_TOOLTIPS = ("The ControlNet, for PixArt-δ Apply ControlNet.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (
                    MODEL_TYPE,
                    {"tooltip": "The transformer the ControlNet will steer (its own base or, e.g., the LCM)."},
                ),
                "controlnet_name": (
                    CONTROLNETS.names(),
                    {
                        "tooltip": "A ControlNet from models/controlnet, or the reference full file from "
                        "models/checkpoints."
                    },
                ),
            }
        }

    def load(self, model: PixArtModel, controlnet_name: str) -> tuple[PixArtControlNet]:
        source = open_checkpoint(CONTROLNETS.path(controlnet_name))
        base, devices, mode = model.transformer, model.managed, model.quantization
        device = placement(
            mode,
            devices.load_device,
            devices.offload_device,
            lambda: parameter_count(inspect_controlnet(source, None, base.config).tensors.shapes.values()),
        )
        network = load_controlnet(source, base.config, dtype=base.dtype, device=device, quantization=mode)
        managed = host.manage(network, devices.load_device, devices.offload_device)
        return (PixArtControlNet(network, managed, model),)


class ControlNetApply:
    """Attaches a ControlNet and its control image to the conditioning (copies; the inputs are untouched)."""

    DESCRIPTION = (
        "Attaches a PixArt-δ ControlNet and its control image (an edge map: PixArt-δ was trained on HED edges; "
        "core Canny works too) to the conditioning. The sampler fits the image to the generation size, encodes "
        "it with the VAE and steers the first blocks with it, in the conditional and unconditional passes alike."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = (
        "The positive conditioning carrying the control.",
        "The negative conditioning carrying the same control (none when no negative was given).",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        percent = {"min": 0.0, "max": 1.0, "step": 0.001}
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "The positive conditioning."}),
                "controlnet": (CONTROLNET_TYPE, {"tooltip": "The ControlNet from PixArt-δ ControlNet Loader."}),
                "image": ("IMAGE", {"tooltip": "The control image, any size: it is resized and centre-cropped."}),
                "vae": ("VAE", {"tooltip": "The VAE that encodes the control image (the SD VAE for PixArt-α/δ)."}),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 10.0,
                        "step": 0.01,
                        "tooltip": "Scales the ControlNet's residuals: 1.0 is the reference, 0 turns it off.",
                    },
                ),
                "start_percent": (
                    "FLOAT",
                    {"default": 0.0, **percent, "tooltip": "Fraction of the steps where the control starts acting."},
                ),
                "end_percent": (
                    "FLOAT",
                    {"default": 1.0, **percent, "tooltip": "Fraction of the steps where the control stops acting."},
                ),
            },
            "optional": {
                "negative": (
                    "CONDITIONING",
                    {"tooltip": "The negative conditioning, if any (the control reaches both passes either way)."},
                ),
            },
        }

    def apply(
        self,
        positive: list,
        controlnet: PixArtControlNet,
        image: torch.Tensor,
        vae: Any,
        strength: float,
        start_percent: float,
        end_percent: float,
        negative: list | None = None,
    ) -> tuple:
        if not start_percent < end_percent:
            raise InputError(f"start_percent ({start_percent}) must be below end_percent ({end_percent})")
        if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
            raise InputError(f"the control image must be an IMAGE [batch, height, width, 3], found {list(image.shape)}")
        if strength == 0:
            return (positive, negative)
        for what, conditioning in (("positive", positive), ("negative", negative)):
            if conditioning is not None and single_entry(conditioning, what)[1].get(CONTROL_KEY) is not None:
                raise InputError(
                    f"the {what} conditioning already carries a PixArt-δ ControlNet: one ControlNet per generation"
                )
        control = ControlImage(controlnet, image, vae, strength, start_percent, end_percent)
        return (with_control(positive, control), None if negative is None else with_control(negative, control))


def with_control(conditioning: list, control: ControlImage) -> list:
    """A copy of ``conditioning`` whose dict carries ``control`` (the embeddings are shared, never changed)."""
    return [[embeddings, {**extra, CONTROL_KEY: control}] for embeddings, extra in conditioning]
