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
    """'auto': CUDA when present, else Apple's MPS, else the CPU. A named device must exist here:
    InputError otherwise (e.g. 'cuda' on a CPU-only build of torch), before any model loads."""
    if str(device) != "auto":
        return _existing(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _existing(device: str | torch.device) -> torch.device:
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise InputError(f"device {device!r} asked for, but {build}: use cpu (or auto)")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    elif chosen.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"device {device!r} asked for, but Apple's MPS is not available here: use cpu (or auto)")
    elif chosen.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {device!r} is not supported: expected auto, cpu, cuda, cuda:N or mps")
    return chosen


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto': fp16 on a GPU, fp32 on the CPU (where half precision is slow or unsupported)."""
    if str(dtype) == "auto":
        return parse_dtype("fp16" if device.type != "cpu" else "fp32")
    return parse_dtype(dtype)
