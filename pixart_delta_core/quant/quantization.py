"""What a quantization is: the modes and what every quantized linear layer offers the loader."""

from __future__ import annotations

from enum import Enum

import torch

from ..errors import InputError


class Quantization(Enum):
    """How linear layers store their weights."""

    NONE = "none"  # in the compute dtype, unquantized
    INT8 = "int8"  # LLM.int8(): int8 weights per output row, outlier input features in fp16
    NF4 = "nf4"  # 4-bit NormalFloat in blocks of 64, block scales quantized again (double quantization)

    @property
    def label(self) -> str:
        """How messages name it."""
        return {"none": "unquantized", "int8": "8-bit (LLM.int8)", "nf4": "4-bit (NF4)"}[self.value]


def parse_quantization(name: str | Quantization) -> Quantization:
    """'none' / 'int8' / 'nf4' (any case), or a ``Quantization``, -> ``Quantization``."""
    if isinstance(name, Quantization):
        return name
    if isinstance(name, str):
        for mode in Quantization:
            if name.strip().lower() == mode.value:
                return mode
    raise InputError(f"unknown quantization {name!r}: expected one of {', '.join(m.value for m in Quantization)}")


class QuantizedLinear:
    """What every quantized linear layer offers the loader (the bitsandbytes layers mix it in)."""

    def read_dtype(self, compute_dtype: torch.dtype) -> torch.dtype:
        """The dtype its unquantized weight is read in before being quantized."""
        raise NotImplementedError

    def quantize_weight(self, weight: torch.Tensor, compute_dtype: torch.dtype) -> None:
        """Quantize ``weight`` [out, in] on its own device and keep only the quantized form."""
        raise NotImplementedError
