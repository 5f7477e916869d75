"""The T5-v1.1 encoder (docs/REFERENCE.md §2): transformers' ``T5EncoderModel`` built on the meta device from a
``T5EncoderConfig`` (``t5_config``), and its loader, which finds the weights in a file or folder and fills
the model tensor by tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..checkpoints.detection import DetectedCheckpoint
from ..checkpoints.files import open_checkpoint, read_json
from ..checkpoints.loading import Place, as_source, load_strict, place_tensor
from ..checkpoints.sources import TensorSource
from ..devices import parse_dtype
from ..errors import CheckpointError
from ..quant.quantization import Quantization, parse_quantization
from ..quant.streaming import quantize_linears_, quantized_ops, quantizing_place
from .t5_config import T5EncoderConfig, detect_t5

if TYPE_CHECKING:
    from transformers import T5EncoderModel

log = logging.getLogger(__name__)

Checkpoint = str | Path | TensorSource | Mapping[str, torch.Tensor]

TIED = {"encoder.embed_tokens.weight": "shared.weight"}  # T5EncoderModel holds the embedding twice


def weights_folder(path: Path) -> Path | None:
    """The folder holding a T5's HF weights: ``path`` itself or a pipeline's ``text_encoder/``; None for a file."""
    if not path.is_dir():
        return None
    for folder in (path, path / "text_encoder"):
        if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
            return folder
    raise CheckpointError(
        f"{path}: a folder, but no T5 weights in it: expected model.safetensors (or model-0000x-of-0000y.safetensors "
        f"with model.safetensors.index.json) and config.json, in the folder or in its text_encoder/ subfolder"
    )


def inspect_t5(checkpoint: Checkpoint) -> DetectedCheckpoint[T5EncoderConfig]:
    """Recognise a T5 encoder in a file, an HF folder, a source or a state dict, reading no weights.

    Raises CheckpointError as ``detect_t5`` does, or when a folder holds no T5 weights.
    """
    config_json: dict[str, Any] | None = None
    if isinstance(checkpoint, (str, Path)):
        folder = weights_folder(Path(checkpoint))
        if folder is not None:
            checkpoint = folder
            if (folder / "config.json").is_file():
                config_json = read_json(folder / "config.json")
        source = open_checkpoint(checkpoint)
    else:
        source = as_source(checkpoint)
    return detect_t5(source, config_json)


def _use_fp32_product(model: T5EncoderModel, dtype: torch.dtype) -> None:
    from .t5_feed_forward import Fp32ProductFeedForward

    with torch.device("meta"):
        for block in model.encoder.block:
            block.layer[-1].DenseReluDense = Fp32ProductFeedForward(model.config, dtype)


def build_t5(config: T5EncoderConfig, dtype: torch.dtype) -> T5EncoderModel:
    """An empty T5EncoderModel on the meta device (no random-init pass); fp16 gets the guarded feed-forward."""
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**config.transformers_kwargs()))
    if dtype == torch.float16:
        _use_fp32_product(model, dtype)
    return model


def quantize_t5_(
    model: T5EncoderModel, quantization: Quantization, dtype: torch.dtype, device: torch.device | str, fallback: Place
) -> Place:
    """Quantize a meta-device T5 encoder's blocks (docs/REFERENCE.md §5: the paper's 8-bit T5); returns the ``Place``
    step to load it with.

    Every linear layer of the blocks (attention q, k, v, o; feed-forward wi_0, wi_1, wo) becomes an empty
    quantized layer; the token embedding, the RMS-norm gains and the relative position bias stay in ``dtype``.
    The feed-forward forms its product in fp32 in every dtype: the quantized ``wo`` scales it into fp16's
    range itself.
    """
    ops = quantized_ops(quantization, device)
    _use_fp32_product(model, dtype)
    quantize_linears_(model.encoder.block, ops)
    return quantizing_place(fallback)


def t5_placement(dtype: torch.dtype) -> Place:
    """How each T5 tensor is stored: all in ``dtype``, except ``wo`` kept in fp32 when ``dtype`` is fp16."""
    if dtype != torch.float16:
        return place_tensor

    def place(module: nn.Module, key: str, tensors: TensorSource, dtype: torch.dtype, device: torch.device) -> None:
        place_tensor(module, key, tensors, torch.float32 if key.endswith(".wo.weight") else dtype, device)

    return place


def load_t5(
    checkpoint: Checkpoint | DetectedCheckpoint[T5EncoderConfig],
    dtype: str | torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    quantization: Quantization | str = Quantization.NONE,
) -> T5EncoderModel:
    """Load a T5-v1.1 encoder strictly, streamed tensor by tensor, in ``dtype`` on ``device``.

    With ``quantization`` the blocks' linear layers are quantized as they stream in (``quantize_t5_``);
    ``dtype`` is then the compute dtype and the dtype of the layers that stay unquantized.
    """
    found = checkpoint.expect(T5EncoderConfig) if isinstance(checkpoint, DetectedCheckpoint) else inspect_t5(checkpoint)
    torch_dtype = parse_dtype(dtype)
    quantization = parse_quantization(quantization)
    model = build_t5(found.config, torch_dtype)
    place = t5_placement(torch_dtype)
    if quantization is not Quantization.NONE:
        place = quantize_t5_(model, quantization, torch_dtype, device, place)
    log.info("loading %s, in %s, %s", found.describe(), torch_dtype, quantization.label)
    load_strict(
        model,
        found.tensors,
        torch_dtype,
        torch.device(device),
        ignore=found.ignored,
        tied=TIED,
        place=place,
    )
    return model
