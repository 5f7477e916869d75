"""The built-in demo model: tiny, random, built in memory (no weights can be downloaded)."""

from __future__ import annotations

from .config import TransformerConfig
from .random_weights import randomize_
from .transformer import PixArtTransformer

DEMO_TRANSFORMER = TransformerConfig(
    depth=2,
    hidden_size=144,
    num_heads=2,
    mlp_hidden=576,
    caption_channels=64,
    sample_size=128,
    micro_conditions=True,
    interpolation_scale=2.0,
)


def demo_transformer(seed: int = 0) -> PixArtTransformer:
    """The demo transformer (72-wide heads like every PixArt, so its head count is detectable)."""
    return randomize_(PixArtTransformer(DEMO_TRANSFORMER), seed)
