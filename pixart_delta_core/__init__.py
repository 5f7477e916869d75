"""PixArt-δ engine: the public API (docs/REFERENCE.md §1 for the model family).

Everything here is imported on first use, not when the package is imported, so that ``import
pixart_delta_core`` (and ComfyUI starting the node pack) does not pay for torch models, diffusers or
transformers until a name is used::

    from pixart_delta_core import PixArtPipeline, generate, load_transformer

The subpackages (``checkpoints``, ``models``, ``text``, ``vae``, ``quant``, ``sampling``, ``pipeline``,
``demo``) stay importable for everything else.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module (relative to this package) that defines it.
_EXPORTS: dict[str, str] = {
    # text (and image) to image
    "PixArtPipeline": ".pipeline.generation",
    "generate": ".pipeline.generation",
    "Control": ".pipeline.generation",
    "Generation": ".pipeline.generation",
    "nearest_bin": ".pipeline.resolution",
    # sampling
    "Sampler": ".sampling.choices",
    "SamplingSettings": ".sampling.samplers",
    "LcmTimesteps": ".sampling.choices",
    # models: recognise a file without reading its weights, then load it strictly
    "PixArtTransformer": ".models.transformer",
    "TransformerConfig": ".models.transformer_config",
    "inspect_transformer": ".models.transformer",
    "load_transformer": ".models.transformer",
    "ControlNetTransformer": ".models.controlnet",
    "inspect_controlnet": ".models.controlnet",
    "load_controlnet": ".models.controlnet",
    "TextEncoder": ".text.encoder",
    "TextEmbedding": ".text.encoder",
    "load_text_encoder": ".text.encoder",
    "load_tokenizer": ".text.encoder",
    "inspect_t5": ".text.t5",
    "load_t5": ".text.t5",
    "Vae": ".vae.autoencoder",
    "inspect_vae": ".vae.autoencoder",
    "load_vae": ".vae.autoencoder",
    "Quantization": ".quant.quantization",
    # files
    "open_checkpoint": ".checkpoints.files",
    "TensorSource": ".checkpoints.sources",
    "write_demo_models": ".demo.files",
    # errors
    "PixArtDeltaError": ".errors",
    "CheckpointError": ".errors",
    "InputError": ".errors",
    "QuantizationError": ".errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the module that defines a public name on first use (PEP 562); raises AttributeError otherwise."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
