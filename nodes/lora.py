"""The LoRA loader node: a PixArt model with a LoRA (or LCM-LoRA) from ComfyUI's ``loras`` folder applied."""

from __future__ import annotations

from ..pixart_delta_core.cli_kinds import check_is_lora
from ..pixart_delta_core.models.lora import apply_loras
from ..pixart_delta_core.models.lora_config import read_lora
from . import comfy_model, host
from .model_choices import INSTEAD, ModelChoices
from .sockets import CORE_MODEL_TOOLTIP, CORE_MODEL_TYPE, MODEL_TYPE, PixArtModel

CATEGORY = "PixArt-δ/loaders"

# LoRAs are single files (a PEFT adapter folder's ``adapter_model.safetensors`` is listed as a file too).
LORAS = ModelChoices(("loras",), is_folder=lambda folder: False)
STRENGTH_LIMIT = 10.0


def load_lora(model: PixArtModel, lora_name: str, strength: float) -> PixArtModel:
    """``model`` with the LoRA ``lora_name`` at ``strength``, as a new model: the input is left as it was (ComfyUI
    keeps it cached for other branches and later runs). Merged into full-precision layers, computed on the fly
    beside 8-bit and 4-bit ones; the new model's tensors are the input's except for the merged layers."""
    if strength == 0:
        return model
    path = LORAS.path(lora_name)
    check_is_lora(path, "lora_name", INSTEAD)  # a model file: which, and its loader, not every tensor unmatched
    lora = read_lora(path)
    patched = apply_loras(model.transformer, [(lora, strength)])
    comfy_model.forget_load_state(patched, model.transformer)  # merged layers are copies of possibly loaded ones
    load_device, offload_device = model.managed.load_device, model.managed.offload_device
    patcher = comfy_model.model_patcher(patched, load_device, offload_device)
    managed = host.manage(patched, load_device, offload_device, patcher)
    name = f"{model.name} + {lora_name} ({strength:g})"
    return PixArtModel(patched, managed, name, model.quantization, (*model.loras, (lora, strength)))


class LoraLoader:
    """Applies a LoRA to a PixArt model; chain several to stack them."""

    DESCRIPTION = (
        "Applies a PixArt LoRA to the model: a style or character LoRA, or PixArt-LCM-LoRA, which turns a PixArt-α "
        "model into a 4-step one (sampler lcm, 4 steps, guidance 0). Reads every layout users share (PEFT/diffusers, "
        "the reference's PEFT files, kohya, OneTrainer, ComfyUI, LyCORIS LoHa and LoKr), recognised from the keys; a "
        "LoRA for another model (SD 1.5, SDXL, Flux, a PixArt of another size) is refused with an error that names "
        "it; an attention-only Sana-600M LoRA has PixArt-XL's names and sizes and cannot be told apart. Works on "
        "full-precision, 8-bit and 4-bit models. Chain several to stack them."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL_TYPE, CORE_MODEL_TYPE)
    RETURN_NAMES = ("model", "MODEL")
    OUTPUT_TOOLTIPS = ("The model with the LoRA applied (the input model is left unchanged).", CORE_MODEL_TOOLTIP)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "A PixArt model from a PixArt-δ loader or another LoRA loader."}),
                "lora_name": (LORAS.names(), {"tooltip": "A LoRA file from models/loras."}),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": -STRENGTH_LIMIT,
                        "max": STRENGTH_LIMIT,
                        "step": 0.01,
                        "tooltip": "How strongly the LoRA acts: 1 as trained, 0 not at all, negative the opposite.",
                    },
                ),
            },
            "hidden": comfy_model.HIDDEN_INPUTS,
        }

    def load(
        self,
        model: PixArtModel,
        lora_name: str,
        strength: float = 1.0,
        prompt: dict | None = None,
        unique_id: str | None = None,
    ) -> tuple:
        comfy_model.refuse_missing_core_model(prompt, unique_id, self.RETURN_NAMES.index("MODEL"))
        patched = load_lora(model, lora_name, strength)
        return (patched, patched.core_model)
