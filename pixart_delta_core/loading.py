"""Strict, streaming loading: models are built on the meta device and filled tensor by tensor.

No second full copy of the weights ever exists: each tensor is read, converted to the target
dtype and device, and assigned; the source then drops what it held for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import StateDictSource, TensorSource, folder_config, open_checkpoint
from .config import Detected, TransformerConfig, detect_transformer
from .controlnet import ControlNetTransformer
from .controlnet_config import DetectedControlNet, detect_controlnet
from .errors import CheckpointError
from .ops import Ops
from .quant import Quantization, quantize_blocks_
from .transformer import PixArtTransformer

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RECOMPUTED = ("pos_embed",)  # the reference saves its training-size positions; they are recomputed


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """'fp32' / 'fp16' / 'bf16' (or a torch dtype among those) -> torch dtype."""
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    if name in DTYPES:
        return DTYPES[name]  # type: ignore[index]
    raise CheckpointError(f"unknown weight dtype {name!r}: expected one of {', '.join(DTYPES)}")


def as_source(checkpoint: str | Path | TensorSource | Mapping[str, torch.Tensor]) -> TensorSource:
    """A path (file or diffusers folder), a source, or an in-memory state dict, as a source."""
    if isinstance(checkpoint, TensorSource):
        return checkpoint
    if isinstance(checkpoint, Mapping):
        return StateDictSource(checkpoint)
    return open_checkpoint(checkpoint)


def inspect_transformer(
    checkpoint: str | Path | TensorSource | Mapping[str, torch.Tensor], hints: Mapping[str, Any] | None = None
) -> Detected:
    """Detect a transformer checkpoint's layout and config without reading its weights."""
    source = as_source(checkpoint)
    return detect_transformer(source, {**folder_config(source), **(hints or {})})


def load_transformer(
    checkpoint: str | Path | TensorSource | Mapping[str, torch.Tensor] | Detected,
    dtype: str | torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    hints: Mapping[str, Any] | None = None,
    ops: type[Ops] = Ops,
    quantization: Quantization | str = Quantization.NONE,
) -> PixArtTransformer:
    """Load a PixArt transformer from any supported layout, strictly, in ``dtype`` on ``device``.

    ``quantization`` int8 or nf4 quantizes the linear layers of its blocks as the weights stream in
    (``quant.quantize_blocks_``); ``dtype`` is then the compute dtype and that of every other layer.
    """
    detected = checkpoint if isinstance(checkpoint, Detected) else inspect_transformer(checkpoint, hints)
    log.info("loading %s", detected.describe())
    model = PixArtTransformer(detected.config, ops=ops, device="meta")
    place = quantize_blocks_(model, quantization, device, place_tensor)
    load_strict(model, detected.tensors, parse_dtype(dtype), torch.device(device), ignore=RECOMPUTED, place=place)
    return model


def inspect_controlnet(
    checkpoint: str | Path | TensorSource | Mapping[str, torch.Tensor],
    hints: Mapping[str, Any] | None = None,
    base_config: TransformerConfig | None = None,
) -> DetectedControlNet:
    """Detect a ControlNet checkpoint's layout and config without reading its weights."""
    source = as_source(checkpoint)
    return detect_controlnet(source, {**folder_config(source), **(hints or {})}, base_config)


def load_controlnet(
    checkpoint: str | Path | TensorSource | Mapping[str, torch.Tensor],
    base_config: TransformerConfig,
    dtype: str | torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    ops: type[Ops] = Ops,
    hints: Mapping[str, Any] | None = None,
    quantization: Quantization | str = Quantization.NONE,
) -> ControlNetTransformer:
    """Load the ControlNet of any supported layout for a base of ``base_config``, strictly, streaming.

    From a reference full checkpoint only its ControlNet part is read: its base loads through
    ``load_transformer``, or another base that fits (e.g. the LCM transformer) is used instead.
    ``quantization`` as for ``load_transformer``.
    """
    detected = inspect_controlnet(checkpoint, hints, base_config)
    detected.config.check_fits(base_config)
    log.info("loading %s", detected.describe())
    model = ControlNetTransformer(detected.config, ops=ops, device="meta")
    place = quantize_blocks_(model, quantization, device, place_tensor)
    load_strict(model, detected.tensors, parse_dtype(dtype), torch.device(device), place=place)
    return model


Place = Callable[[nn.Module, str, TensorSource, torch.dtype, torch.device], None]
"""The per-tensor step of streaming loading: ``place(module, key, tensors, dtype, device)``."""


def place_tensor(module: nn.Module, key: str, tensors: TensorSource, dtype: torch.dtype, device: torch.device) -> None:
    """Read ``tensors[key]`` into a new tensor on ``device`` (floating point in ``dtype``) and put it in ``module``.

    This is the one place where a tensor is allocated and filled: a loader that stores some layers
    differently (kept in fp32, quantized while streaming) passes its own ``Place`` to ``load_strict``.
    A tensor kept as stored on the CPU is the file's memory-mapped view when the source has one.
    """
    stored = tensors.dtypes[key]
    target = dtype if stored.is_floating_point else stored
    value = tensors.mapped(key) if device.type == "cpu" and target == stored else None
    if value is None:
        value = torch.empty(tensors.shapes[key], dtype=target, device=device)
        tensors.read_into(key, value)
    assign(module, key, value)


def load_strict(
    module: nn.Module,
    tensors: TensorSource,
    dtype: torch.dtype,
    device: torch.device,
    ignore: Iterable[str] = (),
    tied: Mapping[str, str] | None = None,
    place: Place = place_tensor,
) -> None:
    """Fill a meta-device ``module`` from ``tensors``: every key present, no extra, shapes equal.

    ``tied`` maps a key to the key whose parameter it shares (tied embeddings): it is not read,
    even when the file holds a copy, and ends up the very same tensor as its target.
    """
    tied = dict(tied or {})
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if k not in tied}
    skipped = set(ignore) | tied.keys()
    provided = {k: s for k, s in tensors.shapes.items() if k not in skipped}
    check_keys(expected, provided, tensors.origin)
    for key in expected:
        place(module, key, tensors, dtype, device)
    for key, target in tied.items():
        owner_name, _, leaf = key.rpartition(".")
        setattr(module.get_submodule(owner_name), leaf, module.get_parameter(target))
    module.eval().requires_grad_(False)


def check_keys(expected: Mapping[str, tuple[int, ...]], provided: Mapping[str, tuple[int, ...]], origin: str) -> None:
    """Raise one error naming every missing, unexpected and wrong-shaped key."""
    missing = sorted(expected.keys() - provided.keys())
    unexpected = sorted(provided.keys() - expected.keys())
    wrong = [
        f"{k}: expected {list(expected[k])}, found {list(provided[k])}"
        for k in expected
        if k in provided and expected[k] != provided[k]
    ]
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{title}: {shown}")
    if problems:
        raise CheckpointError(f"{origin}: the weights do not match the detected model; " + "; ".join(problems))


def assign(module: nn.Module, key: str, value: torch.Tensor) -> None:
    """Put ``value`` in ``module`` under ``key`` (a frozen parameter if the key is one, else a buffer)."""
    owner_name, _, leaf = key.rpartition(".")
    owner = module.get_submodule(owner_name)
    if leaf in owner._parameters:
        setattr(owner, leaf, nn.Parameter(value, requires_grad=False))
    else:
        setattr(owner, leaf, value)
