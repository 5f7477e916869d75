"""Loader nodes: the PixArt transformer (any layout the engine reads) and the T5 text encoder."""

from __future__ import annotations

import math
from pathlib import Path

from ..pixart_delta_core.checkpoint import open_checkpoint
from ..pixart_delta_core.errors import CheckpointError
from ..pixart_delta_core.loading import inspect_transformer, load_transformer, parse_dtype
from ..pixart_delta_core.text import TextEncoder, find_tokenizer, load_text_encoder
from ..pixart_delta_core.transformer import PixArtTransformer
from . import host
from .model_choices import TEXT_ENCODERS, TRANSFORMERS

CATEGORY = "PixArt-δ/loaders"
MODEL_TYPE = "PIXART_DELTA_MODEL"
T5_TYPE = "PIXART_DELTA_T5"
DTYPES = ["auto", "fp16", "bf16", "fp32"]


class PixArtModel:
    """A loaded PixArt transformer (the PIXART_DELTA_MODEL type), handed to ComfyUI's model management."""

    def __init__(self, transformer: PixArtTransformer, managed: host.ManagedModel, name: str) -> None:
        self.transformer = transformer
        self.managed = managed
        self.name = name

    def __repr__(self) -> str:
        return f"PixArtModel({self.name!r}: {self.transformer.config.describe()}, {self.transformer.dtype})"


class PixArtT5:
    """A loaded T5 encoder and its tokenizer (the PIXART_DELTA_T5 type), handed to ComfyUI's model management."""

    def __init__(self, encoder: TextEncoder, managed: host.ManagedModel, name: str) -> None:
        self.encoder = encoder
        self.managed = managed
        self.name = name

    def __repr__(self) -> str:
        return f"PixArtT5({self.name!r}, width {self.encoder.width}, {self.encoder.dtype})"


class CheckpointLoader:
    """Loads a PixArt-α/δ/Σ transformer from checkpoints, diffusion_models or diffusers."""

    DESCRIPTION = (
        "Loads a PixArt transformer: PixArt-α (e.g. PixArt-XL-2-1024-MS.pth), the PixArt-δ LCM "
        "(PixArt-LCM-XL-2-1024-MS, its transformer file or whole diffusers folder), the base of a reference "
        "ControlNet checkpoint, or PixArt-Σ. The layout and configuration are read from the weights."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The PixArt transformer, for the PixArt-δ sampler and ControlNet loader.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "ckpt_name": (
                    TRANSFORMERS.names(),
                    {
                        "tooltip": "A transformer file from models/checkpoints or models/diffusion_models (reference "
                        ".pth, .safetensors, diffusers file), or a diffusers folder from models/diffusers."
                    },
                ),
                "weight_dtype": (
                    DTYPES,
                    {
                        "default": "auto",
                        "tooltip": "Precision of the weights. auto: what ComfyUI picks for this device (fp16 or bf16 "
                        "on most GPUs, fp32 on the CPU).",
                    },
                ),
            }
        }

    def load(self, ckpt_name: str, weight_dtype: str = "auto") -> tuple[PixArtModel]:
        path = TRANSFORMERS.path(ckpt_name)
        source = open_checkpoint(path)
        detected = inspect_transformer(source)
        load_device, offload_device = host.torch_device(), host.offload_device()
        if weight_dtype == "auto":
            parameters = sum(math.prod(shape) for shape in detected.tensors.shapes.values())
            dtype = host.transformer_dtype(load_device, parameters)
        else:
            dtype = parse_dtype(weight_dtype)
        transformer = load_transformer(source, dtype=dtype, device=offload_device)
        return (PixArtModel(transformer, host.ManagedModel(transformer, load_device, offload_device), ckpt_name),)


class T5Loader:
    """Loads the T5-v1.1 text encoder PixArt reads prompts with."""

    DESCRIPTION = (
        "Loads the T5-v1.1-XXL encoder from models/text_encoders: a single file such as t5xxl_fp16.safetensors "
        "or t5xxl_fp8_e4m3fn.safetensors, an HF folder, or the text_encoder of a PixArt diffusers folder in "
        "models/diffusers. The tokenizer is ComfyUI's own T5 tokenizer (else the one in the folder)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (T5_TYPE,)
    RETURN_NAMES = ("t5",)
    OUTPUT_TOOLTIPS = ("The T5 encoder and tokenizer, for PixArt-δ T5 Text Encode.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "t5_name": (
                    TEXT_ENCODERS.names(),
                    {"tooltip": "T5 weights from models/text_encoders (or models/clip), or a folder holding them."},
                ),
                "dtype": (
                    ["auto", "bf16", "fp16", "fp32"],
                    {
                        "default": "auto",
                        "tooltip": "Precision of the weights. auto: bf16 where the device computes it, else fp16 "
                        "(its feed-forward outputs kept in fp32, as T5 overflows in plain fp16). fp8 files are "
                        "converted on loading.",
                    },
                ),
                "device": (
                    ["auto", "cpu"],
                    {
                        "default": "auto",
                        "tooltip": "auto: ComfyUI's text-encoder device (the GPU when there is room); cpu: keep T5 "
                        "on the CPU and leave the GPU to the transformer.",
                    },
                ),
            }
        }

    def load(self, t5_name: str, dtype: str = "auto", device: str = "auto") -> tuple[PixArtT5]:
        path = TEXT_ENCODERS.path(t5_name)
        load_device, offload_device = host.text_encoder_devices(cpu_only=device == "cpu")
        torch_dtype = host.text_encoder_dtype(load_device) if dtype == "auto" else parse_dtype(dtype)
        encoder = load_text_encoder(path, torch_dtype, offload_device, tokenizer=tokenizer_for(path))
        return (PixArtT5(encoder, host.ManagedModel(encoder.model, load_device, offload_device), t5_name),)


def tokenizer_for(weights: Path) -> Path:
    """ComfyUI's bundled T5 tokenizer, else the one that comes with the weights, else a clear error."""
    bundled = host.bundled_t5_tokenizer()
    if bundled is not None:
        return bundled
    try:
        return find_tokenizer(weights)
    except CheckpointError as err:
        raise CheckpointError(
            f"no T5 tokenizer for {weights.name}: ComfyUI's bundled tokenizer (comfy/text_encoders/t5_tokenizer) "
            f"is not available here and the weights carry none; use an HF T5 folder or a PixArt diffusers "
            f"folder, which include one ({err})"
        ) from err
