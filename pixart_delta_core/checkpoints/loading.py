"""Strict, streaming loading: models are built on the meta device and filled tensor by tensor.

No second full copy of the weights ever exists: each tensor is read, converted to the target
dtype and device, and assigned; the source then drops what it held for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .files import StateDictSource, TensorSource, open_checkpoint

log = logging.getLogger(__name__)


def as_source(checkpoint: str | Path | TensorSource | Mapping[str, torch.Tensor]) -> TensorSource:
    """A path (file or diffusers folder), a source, or an in-memory state dict, as a source."""
    if isinstance(checkpoint, TensorSource):
        return checkpoint
    if isinstance(checkpoint, Mapping):
        return StateDictSource(checkpoint)
    return open_checkpoint(checkpoint)


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
