"""Runtime choices: devices and dtype names, parsed in one place for the engine, the command line and the nodes."""

from __future__ import annotations

import torch

from .errors import CheckpointError, InputError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """'fp32' / 'fp16' / 'bf16' (or a torch dtype among those) -> torch dtype."""
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    if name in DTYPES:
        return DTYPES[name]  # type: ignore[index]
    raise CheckpointError(f"unknown weight dtype {name!r}: expected one of {', '.join(DTYPES)}")


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """'auto': CUDA when present, else Apple's MPS, else the CPU; any other name goes through ``check_device``."""
    if str(device) != "auto":
        return check_device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_option(device: str | torch.device, option: str = "--device") -> torch.device:
    """``pick_device`` for a command-line ``option``: its InputError is prefixed with the option's name."""
    try:
        return pick_device(device)
    except InputError as err:
        raise InputError(f"{option}: {err}") from None


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto': fp16 on a GPU, fp32 on the CPU (where half precision is slow or unsupported)."""
    if str(dtype) == "auto":
        return parse_dtype("fp16" if device.type != "cpu" else "fp32")
    return parse_dtype(dtype)


def check_device(device: str | torch.device) -> torch.device:
    """A device this torch build can run on: 'cpu', 'cuda' / 'cuda:N' with a GPU N present, 'mps' where Apple's
    backend is available, or another accelerator type (e.g. 'xpu') its torch module says is available.

    Raises InputError for a malformed name ('gpu', 'cuda:x'), the meta device, or a device absent here.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise InputError(
            f"device {device!r} is not a device name (expected e.g. 'cpu', 'cuda', 'cuda:0', 'mps')"
        ) from err
    kind = parsed.type
    if kind == "cpu":
        return parsed
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device {device!r}: this torch ({torch.__version__}) sees no CUDA GPU")
        if parsed.index is not None and parsed.index >= count:
            raise InputError(f"device {device!r}: there is no CUDA GPU {parsed.index}; found {count} (0..{count - 1})")
        return parsed
    if kind == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise InputError(f"device {device!r}: Apple's MPS backend is not available here")
        return parsed
    module = getattr(torch, kind, None)
    available = getattr(module, "is_available", None)
    if kind == "meta" or available is None or not available():
        raise InputError(f"device {device!r}: not a device this torch ({torch.__version__}) can run on here")
    return parsed
