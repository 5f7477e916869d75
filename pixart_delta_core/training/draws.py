"""The random numbers of a training step, drawn per sample from (seed, step, sample index).

Every sample of the global batch gets its own CPU generator, so a step draws the same numbers
however the batch is split over processes, and a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_MASK = (1 << 63) - 1


@dataclass(frozen=True)
class Draws:
    """Per-sample random numbers of one step (CPU, fp32)."""

    latent_noise: Tensor  # [B, C, h, w] N(0, 1): samples the VAE posterior
    noise: Tensor  # [B, C, h, w] N(0, 1): the diffusion noise
    uniform: Tensor  # [B] U[0, 1): picks the timestep
    dropout: Tensor  # [B] U[0, 1): caption dropout when below its probability
    crop: Tensor  # [B, 2] U[0, 1): where a crop sits (autoencoder training)

    def to(self, device: torch.device | str) -> Draws:
        return Draws(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))

    def timesteps(self, count: int) -> Tensor:
        """An index in 0..count-1 per sample, uniform."""
        return (self.uniform * count).long().clamp(max=count - 1)


def draw(seed: int, step: int, first: int, batch: int, latent_shape: tuple[int, ...]) -> Draws:
    """The draws of samples ``first .. first + batch - 1`` of the global batch at optimizer micro-step ``step``."""
    parts: list[list[Tensor]] = [[], [], [], [], []]
    for index in range(first, first + batch):
        generator = torch.Generator().manual_seed(((seed << 44) ^ (step << 16) ^ index) & _MASK)
        parts[0].append(torch.randn(latent_shape, generator=generator))
        parts[1].append(torch.randn(latent_shape, generator=generator))
        parts[2].append(torch.rand((), generator=generator))
        parts[3].append(torch.rand((), generator=generator))
        parts[4].append(torch.rand(2, generator=generator))
    return Draws(*(torch.stack(p) for p in parts))
