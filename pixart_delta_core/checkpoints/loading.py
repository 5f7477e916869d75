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
from .files import open_checkpoint
from .sources import StateDictSource, TensorSource

log = logging.getLogger(__name__)


def as_source(
    checkpoint: str | Path | TensorSource | Mapping[str, torch.Tensor],
    kind: str = "model",
    subfolder: str = "transformer",
) -> TensorSource:
    """A path (file or diffusers folder: ``open_checkpoint``, with its ``kind`` and ``subfolder``), a source, or an
    in-memory state dict, as a source."""
    if isinstance(checkpoint, TensorSource):
        return checkpoint
    if isinstance(checkpoint, Mapping):
        return StateDictSource(checkpoint)
    return open_checkpoint(checkpoint, kind, subfolder)


Place = Callable[[nn.Module, str, TensorSource, torch.dtype, torch.device], None]
"""The per-tensor step of streaming loading: ``place(module, key, tensors, dtype, device)``."""


def place_tensor(module: nn.Module, key: str, tensors: TensorSource, dtype: torch.dtype, device: torch.device) -> None:
    """Read ``tensors[key]`` into a new tensor on ``device`` (floating point in ``dtype``) and put it in ``module``.

    This is the one place where a tensor is allocated and filled: a loader that stores some layers
    differently (kept in fp32, quantized while streaming) passes its own ``Place`` to ``load_strict``.
    A tensor kept as stored on the CPU is the file's memory-mapped view when the source has one.
    """
    value = tensors.mapped(key) if device.type == "cpu" and tensors.dtypes[key] == dtype else None
    if value is None:
        value = torch.empty(tensors.shapes[key], dtype=dtype, device=device)
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
    """Fill a meta-device ``module`` from ``tensors``: every key present, no extra, shapes equal, all floating point.

    Raises ``CheckpointError`` (``check_keys``, ``check_floating``) before any tensor is read.

    ``tied`` maps a key to the key whose parameter it shares (tied embeddings): it is not read,
    even when the file holds a copy, and ends up the very same tensor as its target.
    """
    tied = dict(tied or {})
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if k not in tied}
    skipped = set(ignore) | tied.keys()
    provided = {k: s for k, s in tensors.shapes.items() if k not in skipped}
    check_keys(expected, provided, tensors.origin)
    check_floating(tensors, expected)
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


FLOATING_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)
"""The stored dtypes a weight may have: the model converts them to its own dtype as they load."""


def check_floating(tensors: TensorSource, keys: Iterable[str]) -> None:
    """Raise ``CheckpointError`` naming every key in ``keys`` stored as anything but a real floating-point dtype.

    Every parameter and buffer of the pack's models is floating point; an integer, boolean or complex
    tensor under its name is a damaged or foreign file (or a dtype tag flipped in a header), refused here,
    before any tensor is read, rather than at the first forward. A layout that stores integer tensors on
    purpose (a pre-quantized format) would have to declare them; none of the pack's does.
    """
    wrong = [
        f"{k}: {str(tensors.dtypes[k]).removeprefix('torch.')}"
        for k in keys
        if tensors.dtypes[k] not in FLOATING_DTYPES
    ]
    if wrong:
        shown = ", ".join(wrong[:8]) + (f", ... ({len(wrong)} in all)" if len(wrong) > 8 else "")
        raise CheckpointError(
            f"{tensors.origin}: expected floating-point weights (fp32, fp16, bf16, fp8 or fp64), found {shown}"
        )


def assign(module: nn.Module, key: str, value: torch.Tensor) -> None:
    """Put ``value`` in ``module`` under ``key`` (a frozen parameter if the key is one, else a buffer)."""
    owner_name, _, leaf = key.rpartition(".")
    owner = module.get_submodule(owner_name)
    if leaf in owner._parameters:
        setattr(owner, leaf, nn.Parameter(value, requires_grad=False))
    else:
        setattr(owner, leaf, value)
