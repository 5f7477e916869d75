"""ControlNet nodes (PixArt-δ's ControlNet-Transformer, docs/REFERENCE.md §4): the loader and the apply node.

The apply node leaves a ``conditioning.ControlImage`` in copies of the conditioning (never the input's
own dict), and in ComfyUI the same as a core control (``comfy_model``) that core samplers apply; the
sampler encodes its image once the generation size is known.
"""

from __future__ import annotations

from typing import Any

import torch

from ..pixart_delta_core.errors import InputError, given_as
from ..pixart_delta_core.models.controlnet import controlnet_source, inspect_controlnet, load_controlnet
from ..pixart_delta_core.models.lora import apply_loras
from . import comfy_model, host
from .conditioning import ControlImage, control_in, with_control
from .model_choices import CONTROLNETS, INSTEAD
from .sockets import CONTROLNET_TYPE, MODEL_TYPE, PixArtControlNet, PixArtModel

CATEGORY = "PixArt-δ/controlnet"


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
            },
            "optional": {
                "apply_model_loras": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Give the ControlNet's copied blocks the LoRAs applied to the model (by PixArt-δ "
                        "LoRA Loader) on the base blocks they copy.",
                    },
                ),
            },
        }

    def load(
        self, model: PixArtModel, controlnet_name: str, apply_model_loras: bool = False
    ) -> tuple[PixArtControlNet]:
        with given_as(None, INSTEAD):  # a file of another kind: the loader it goes in
            source = controlnet_source(CONTROLNETS.path(controlnet_name))
            base, devices, mode = model.transformer, model.managed, model.quantization
            device = host.placement(
                mode,
                devices.load_device,
                devices.offload_device,
                lambda: host.parameter_count(inspect_controlnet(source, None, base.config).tensors.shapes.values()),
            )
            network = load_controlnet(source, base.config, dtype=base.dtype, device=device, quantization=mode)
        if apply_model_loras and model.loras:
            network = apply_loras(network, list(model.loras))
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
        "The positive conditioning carrying the control (for the PixArt-δ Sampler, or KSampler on the MODEL).",
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
            if conditioning is not None and control_in(conditioning, what) is not None:
                raise InputError(
                    f"the {what} conditioning already carries a PixArt-δ ControlNet: one ControlNet per generation"
                )
        control = ControlImage(controlnet, image, vae, strength, start_percent, end_percent)
        return (_controlled(positive, control), None if negative is None else _controlled(negative, control))


def _controlled(conditioning: list, control: ControlImage) -> list:
    """``conditioning.with_control``, plus the same control as a core control for core samplers on the core MODEL."""
    return [
        [embeddings, {**extra, **comfy_model.core_control(control, extra)}]
        for embeddings, extra in with_control(conditioning, control)
    ]
