"""Weight quantization with bitsandbytes: LLM.int8() (Dettmers et al. 2022) and NF4 (QLoRA, Dettmers et al. 2023).

The paper's low-memory recipe (docs/REFERENCE.md §5) runs T5-XXL in 8-bit. Models are quantized while they
stream from the file: each linear layer's weight is read (converted chunk by chunk to 16 bits, on the
target device), quantized there, and its 16-bit copy dropped before the next one is read.

bitsandbytes is imported only when quantization is asked for, and checked then: a missing or unusable
bitsandbytes is an error, never a silent fallback to full precision.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import InputError, QuantizationError, first_line
from ..memory import return_free_heap
from ..ops import Ops
from .quantization import Quantization, QuantizedLinear

if TYPE_CHECKING:
    from ..checkpoints.loading import Place
    from ..checkpoints.sources import TensorSource

log = logging.getLogger(__name__)


_WHAT_TO_DO = (
    "install or upgrade bitsandbytes in the Python environment that runs the pack "
    "(pip install -U bitsandbytes; recent versions run on CPU as well as on CUDA GPUs), "
    "or choose quantization 'none' (full precision, about twice the memory of int8)"
)


def quantized_ops(quantization: Quantization, device: torch.device | str) -> type[Ops]:
    """The ``Ops`` whose ``Linear`` is the bitsandbytes layer for ``quantization``, checked to run on ``device``.

    Raises ``QuantizationError`` when bitsandbytes is missing, fails to load, or cannot run there.
    """
    if quantization is Quantization.NONE:
        raise InputError("quantized_ops needs a quantization other than 'none' (plain layers are ops.Ops)")
    try:
        import bitsandbytes
    except ImportError as err:
        raise QuantizationError(
            f"{quantization.label} weights need the bitsandbytes package, which is not installed ({err}): {_WHAT_TO_DO}"
        ) from err
    except Exception as err:  # a broken install fails in many ways (missing CUDA libraries, ABI mismatch...)
        raise QuantizationError(
            f"{quantization.label} weights need bitsandbytes, which is installed but does not load "
            f"({type(err).__name__}: {first_line(err)}): {_WHAT_TO_DO}"
        ) from err
    version = getattr(bitsandbytes, "__version__", "of unknown version")
    try:
        from . import bnb_layers
    except ImportError as err:  # an old bitsandbytes without the functions the layers use
        raise QuantizationError(
            f"bitsandbytes {version} lacks what {quantization.label} weights need ({first_line(err)}): {_WHAT_TO_DO}"
        ) from err
    device = torch.device(device)
    try:
        bnb_layers.probe(quantization, device)
    except Exception as err:  # whatever bitsandbytes raises for a device it cannot serve
        raise QuantizationError(
            f"bitsandbytes {version} cannot run {quantization.label} layers on {device} "
            f"({type(err).__name__}: {first_line(err)}): {_WHAT_TO_DO}, or load on another device"
        ) from err
    log.debug("bitsandbytes %s runs %s layers on %s", version, quantization.label, device)
    return bnb_layers.OPS[quantization]


def quantizing_place(fallback: Place) -> Place:
    """A ``Place`` step that quantizes the weights of ``QuantizedLinear`` layers and leaves the rest to ``fallback``.

    The weight is read into a 16-bit (or compute-dtype) tensor on the target device, so on a GPU it is
    quantized on the GPU; that tensor is the only unquantized copy and lives for one layer.
    """

    def place(module: nn.Module, key: str, tensors: TensorSource, dtype: torch.dtype, device: torch.device) -> None:
        owner_name, _, leaf = key.rpartition(".")
        owner = module.get_submodule(owner_name)
        if leaf != "weight" or not isinstance(owner, QuantizedLinear):
            fallback(module, key, tensors, dtype, device)
            return
        weight = torch.empty(tensors.shapes[key], dtype=owner.read_dtype(dtype), device=device)
        tensors.read_into(key, weight)
        owner.quantize_weight(weight, dtype)
        if device.type == "cpu":
            del weight
            return_free_heap()

    return place


def quantize_linears_(module: nn.Module, ops: type[Ops]) -> list[str]:
    """Replace every ``nn.Linear`` of a meta-device ``module`` by an empty ``ops.Linear`` of the same shape, to be
    filled by ``quantizing_place``; returns the replaced layers' names."""
    replaced = []
    for name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            full = f"{name}.{child_name}" if name else child_name
            if child.weight.device.type != "meta":
                raise InputError(f"{full}: layers are swapped for quantized ones before loading (on meta) only")
            layer = ops.Linear(child.in_features, child.out_features, child.bias is not None, device="meta")
            setattr(parent, child_name, layer)
            replaced.append(full)
    return replaced
