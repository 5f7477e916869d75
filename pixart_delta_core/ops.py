"""The layer namespace models are built from (docs/DESIGN.md principle 4).

Every weight-bearing layer of the transformer and the ControlNet is made through an ``Ops``
namespace, so a quantized namespace swaps in other layers without a second model definition.
"""

from __future__ import annotations

from torch import nn


class Ops:
    """Plain PyTorch layers."""

    Linear: type[nn.Linear] = nn.Linear
    Conv2d: type[nn.Conv2d] = nn.Conv2d
