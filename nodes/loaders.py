"""Loader nodes: the PixArt transformer (any layout the engine reads), the T5 text encoder, and both at once
quantized for the paper's low-memory recipe (docs/REFERENCE.md §5: T5 in 8-bit)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..pixart_delta_core.checkpoints.files import open_checkpoint
from ..pixart_delta_core.demo.embedded_files import embedded_model
from ..pixart_delta_core.devices import parse_dtype
from ..pixart_delta_core.errors import CheckpointError, InputError, given_as
from ..pixart_delta_core.models.transformer import inspect_transformer, load_transformer
from ..pixart_delta_core.models.transformer_config import sample_size_for
from ..pixart_delta_core.quant.quantization import Quantization, parse_quantization
from ..pixart_delta_core.text.encoder import find_tokenizer, load_text_encoder
from ..pixart_delta_core.text.t5 import inspect_t5
from . import comfy_model, host
from .model_choices import INSTEAD, TEXT_ENCODERS, TRANSFORMERS
from .sockets import CORE_MODEL_TOOLTIP, CORE_MODEL_TYPE, MODEL_TYPE, T5_TYPE, PixArtModel, PixArtT5

CATEGORY = "PixArt-δ/loaders"
DTYPES = ["auto", "fp16", "bf16", "fp32"]
QUANTIZATIONS = [q.value for q in Quantization]
QUANTIZATION_TOOLTIP = (
    "none: full precision (the dtype above). int8: bitsandbytes' LLM.int8, about half the memory of fp16 at "
    "nearly the same quality. nf4: 4-bit NormalFloat, about a quarter, coarser. Quantized weights are made while "
    "the file streams in, on the device the model computes on; they need the bitsandbytes package."
)


# What detection cannot read from some files' weights (PixArt-Σ 256 px has no pos_embed and no micro-conditions):
# widget name -> (choices after "auto", the detection hint it sets, widget value -> hint value).
HINT_WIDGETS: dict[str, tuple[list[str], str, Callable[[int], int]]] = {
    "training_resolution": (["256", "512", "1024", "2048"], "sample_size", sample_size_for),
    "heads": (["8", "12", "16", "20", "24", "32"], "num_heads", int),
    "caption_length": (["120", "300"], "caption_length", int),
}


def detection_hints(widgets: dict[str, str]) -> dict[str, int]:
    """The detection hints the loader's widgets give ("auto" gives none)."""
    return {HINT_WIDGETS[n][1]: HINT_WIDGETS[n][2](int(v)) for n, v in widgets.items() if v != "auto"}


def load_model(
    ckpt_name: str, weight_dtype: str = "auto", quantization: str = "none", **hint_widgets: str
) -> PixArtModel:
    """The PixArt transformer ``ckpt_name`` names, in ``weight_dtype`` (the compute dtype when quantized);
    ``hint_widgets`` (``HINT_WIDGETS``) give what detection cannot read from the weights. The file is
    recognised once."""
    mode = parse_quantization(quantization)
    path = TRANSFORMERS.path(ckpt_name)
    source = open_checkpoint(path)
    with given_as(None, INSTEAD):  # a file of another kind: the loader it goes in
        detected = inspect_transformer(source, detection_hints(hint_widgets))
    load_device, offload_device = host.torch_device(), host.offload_device()
    parameters = host.parameter_count(detected.tensors.shapes.values())
    dtype = host.transformer_dtype(load_device, parameters) if weight_dtype == "auto" else parse_dtype(weight_dtype)
    device = host.placement(mode, load_device, offload_device, lambda: parameters)
    ops = comfy_model.layer_ops(mode)  # cast-capable layers: ComfyUI can stream them in low-VRAM mode
    transformer = load_transformer(detected, dtype=dtype, device=device, ops=ops, quantization=mode)
    patcher = comfy_model.model_patcher(transformer, load_device, offload_device)
    managed = host.manage(transformer, load_device, offload_device, patcher)
    return PixArtModel(transformer, managed, ckpt_name, mode, embedded=embedded_model(path))


def load_t5(t5_name: str, dtype: str = "auto", device: str = "auto", quantization: str = "none") -> PixArtT5:
    """The T5 encoder ``t5_name`` names with its tokenizer, in ``dtype`` (the compute dtype when quantized)."""
    mode = parse_quantization(quantization)
    path = TEXT_ENCODERS.path(t5_name)
    load_device, offload_device = host.text_encoder_devices(cpu_only=device == "cpu")
    torch_dtype = host.text_encoder_dtype(load_device) if dtype == "auto" else parse_dtype(dtype)
    with given_as(None, INSTEAD):  # a file of another kind: the loader it goes in
        found = inspect_t5(path)
    target = host.placement(
        mode, load_device, offload_device, lambda: host.parameter_count(found.tensors.shapes.values())
    )
    encoder = load_text_encoder(found, torch_dtype, target, tokenizer=tokenizer_for(path), quantization=mode)
    return PixArtT5(encoder, host.manage(encoder.model, load_device, offload_device), t5_name, mode)


HINT_TOOLTIPS = {
    "training_resolution": "Pixels the model was trained at. auto: read from the file; set it only when loading "
    "asks for it (files without pos_embed or micro-conditions, such as PixArt-Σ 256 px). A value the file "
    "contradicts is refused.",
    "heads": "Attention heads. auto: read from the file (PixArt's heads are 72 wide); set it only when loading "
    "asks for it. A value the file contradicts is refused.",
    "caption_length": "Caption tokens: 120 for PixArt-α/δ, 300 for PixArt-Σ. auto: read from the file or its "
    "folder; set it only when loading asks for it. A value the file contradicts is refused.",
}


class CheckpointLoader:
    """Loads a PixArt-α/δ/Σ transformer from checkpoints, diffusion_models or diffusers."""

    DESCRIPTION = (
        "Loads a PixArt transformer: PixArt-α (e.g. PixArt-XL-2-1024-MS.pth), the PixArt-δ LCM "
        "(PixArt-LCM-XL-2-1024-MS, its transformer file or whole diffusers folder), the base of a reference "
        "ControlNet checkpoint, or PixArt-Σ. The layout and configuration are read from the weights. Optionally "
        "quantized to 8 or 4 bits (the linear layers of its blocks)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL_TYPE, CORE_MODEL_TYPE)
    RETURN_NAMES = ("model", "MODEL")
    OUTPUT_TOOLTIPS = ("The PixArt transformer, for the PixArt-δ sampler and ControlNet loader.", CORE_MODEL_TOOLTIP)

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
                        "tooltip": "Precision of the weights (with quantization: of the computation and the layers "
                        "left unquantized). auto: what ComfyUI picks for this device (fp16 or bf16 on most GPUs, fp32 "
                        "on the CPU).",
                    },
                ),
            },
            "optional": {
                "quantization": (
                    QUANTIZATIONS,
                    {
                        "default": Quantization.NONE.value,
                        "tooltip": f"The blocks' linear layers. {QUANTIZATION_TOOLTIP}",
                    },
                ),
                **{
                    name: (
                        ["auto", *choices],
                        {"default": "auto", "tooltip": HINT_TOOLTIPS[name]},
                    )
                    for name, (choices, _, _) in HINT_WIDGETS.items()
                },
            },
            "hidden": comfy_model.HIDDEN_INPUTS,
        }

    def load(
        self,
        ckpt_name: str,
        weight_dtype: str = "auto",
        quantization: str = "none",
        prompt: dict | None = None,
        unique_id: str | None = None,
        **hint_widgets: str,
    ) -> tuple:
        comfy_model.refuse_missing_core_model(prompt, unique_id, self.RETURN_NAMES.index("MODEL"))
        model = load_model(ckpt_name, weight_dtype, quantization, **hint_widgets)
        return (model, model.core_model)


class T5Loader:
    """Loads the T5-v1.1 text encoder PixArt reads prompts with."""

    DESCRIPTION = (
        "Loads the T5-v1.1-XXL encoder from models/text_encoders: a single file such as t5xxl_fp16.safetensors "
        "or t5xxl_fp8_e4m3fn.safetensors, an HF folder, or the text_encoder of a PixArt diffusers folder in "
        "models/diffusers. The tokenizer is ComfyUI's own T5 tokenizer (else the one in the folder). Optionally "
        "quantized to 8 bits (the paper's low-memory setting) or 4 bits."
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
                        "tooltip": "Precision of the weights (with quantization: of the computation and the layers "
                        "left unquantized). auto: bf16 where the device computes it, else fp16 (its feed-forward "
                        "outputs kept in fp32, as T5 overflows in plain fp16). fp8 files are converted on loading.",
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
            },
            "optional": {
                "quantization": (
                    QUANTIZATIONS,
                    {"default": Quantization.NONE.value, "tooltip": f"T5's linear layers. {QUANTIZATION_TOOLTIP}"},
                ),
            },
        }

    def load(
        self, t5_name: str, dtype: str = "auto", device: str = "auto", quantization: str = "none"
    ) -> tuple[PixArtT5]:
        return (load_t5(t5_name, dtype, device, quantization),)


class LowMemoryLoader:
    """The paper's low-memory recipe in one node (docs/REFERENCE.md §5): T5 in 8-bit (or 4-bit), and the transformer."""

    DESCRIPTION = (
        "Loads T5 quantized to 8 bits (bitsandbytes' LLM.int8, the paper's setting for 1024 px images on an 8 GB "
        "GPU) or 4 bits (NF4), and the PixArt transformer, in full precision (fp16 on a GPU, as the paper runs it) "
        "or quantized too. It replaces the T5 and checkpoint loaders. For one model on the GPU at a time, turn on "
        "low_memory in PixArt-δ T5 Text Encode and in the sampler, and decode with core VAE Decode (Tiled)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (T5_TYPE, MODEL_TYPE, CORE_MODEL_TYPE)
    RETURN_NAMES = ("t5", "model", "MODEL")
    OUTPUT_TOOLTIPS = (
        "The quantized T5 encoder and tokenizer, for PixArt-δ T5 Text Encode.",
        "The PixArt transformer, for the PixArt-δ sampler and ControlNet loader.",
        CORE_MODEL_TOOLTIP,
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "t5_name": T5Loader.INPUT_TYPES()["required"]["t5_name"],
                "t5_quantization": (
                    [Quantization.INT8.value, Quantization.NF4.value],
                    {
                        "default": Quantization.INT8.value,
                        "tooltip": "int8: LLM.int8, T5-XXL in about 5 GB instead of 9.5 GB in fp16 (the paper's "
                        "choice). nf4: 4-bit NormalFloat, about 2.7 GB, coarser. Needs bitsandbytes.",
                    },
                ),
                "ckpt_name": CheckpointLoader.INPUT_TYPES()["required"]["ckpt_name"],
                "transformer_quantization": (
                    QUANTIZATIONS,
                    {
                        "default": Quantization.NONE.value,
                        "tooltip": "none: the transformer in the dtype ComfyUI picks for the device (fp16 on most "
                        "GPUs, as the paper runs it; 1.2 GB for PixArt-XL). int8 or nf4: its blocks' linear layers "
                        "quantized too, for still less memory at some cost in quality.",
                    },
                ),
            },
            "hidden": comfy_model.HIDDEN_INPUTS,
        }

    def load(
        self,
        t5_name: str,
        t5_quantization: str,
        ckpt_name: str,
        transformer_quantization: str = "none",
        prompt: dict | None = None,
        unique_id: str | None = None,
    ) -> tuple:
        comfy_model.refuse_missing_core_model(prompt, unique_id, self.RETURN_NAMES.index("MODEL"))
        if parse_quantization(t5_quantization) is Quantization.NONE:
            raise InputError(
                "the low-memory loader loads T5 quantized (int8 or nf4), found 'none': use PixArt-δ T5 Loader for "
                "an unquantized T5"
            )
        model = load_model(ckpt_name, "auto", transformer_quantization)
        t5 = load_t5(t5_name, "auto", "auto", t5_quantization)  # last: on the GPU when the prompt is encoded
        return (t5, model, model.core_model)


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
