"""Random weights with sensible scales, for tests, benchmarks and the built-in demo model."""

from __future__ import annotations

import torch
from torch import nn


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and buffer of ``module`` in place from ``seed`` (on the CPU generator).

    Matrices get N(0, 1/fan_in), biases N(0, 0.02^2), modulation tables and null captions
    N(0, 1/width): activations keep unit scale through any depth.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in module.state_dict(keep_vars=True).items():
        if not tensor.is_floating_point():
            continue
        if tensor.ndim >= 2:
            std = (tensor[0].numel() if "scale_shift_table" not in name else tensor.shape[-1]) ** -0.5
        else:
            std = 0.02
        values = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * std
        with torch.no_grad():
            tensor.copy_(values.to(tensor.dtype))
    return module
