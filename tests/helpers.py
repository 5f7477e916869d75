"""Test helpers: tiny configs, the shared fixtures folder, diffusers twins of our models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pixart_delta_core.checkpoint import StateDictSource
from pixart_delta_core.config import TransformerConfig
from pixart_delta_core.layouts import REFERENCE_ONLY, to_diffusers
from pixart_delta_core.random_weights import randomize_
from pixart_delta_core.transformer import PixArtTransformer

ROOT = Path(__file__).resolve().parent.parent
# ../shared beside the project's checkout; a worktree sits one level deeper, so the nearest one above counts.
SHARED = next((p / "shared" for p in ROOT.parents if (p / "shared" / "fixtures").is_dir()), ROOT.parent / "shared")
MANIFESTS = SHARED / "fixtures" / "manifests"
TOKENIZER = SHARED / "fixtures" / "t5_tokenizer"

TINY = TransformerConfig(
    depth=2, hidden_size=48, num_heads=4, mlp_hidden=192, caption_channels=32, caption_length=16, sample_size=16
)
TINY_MS = TransformerConfig(
    depth=3,
    hidden_size=48,
    num_heads=2,
    mlp_hidden=192,
    caption_channels=24,
    caption_length=16,
    sample_size=32,
    micro_conditions=True,
    interpolation_scale=2.0,
)


def need_shared(path: Path) -> Path:
    """``path`` inside ../shared, or skip: a user's clone has no ../shared beside it."""
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared fixtures sit beside the project's own checkout only")
    return path


def manifest_source(name: str) -> StateDictSource:
    """A real checkpoint layout rebuilt as meta tensors from its manifest."""
    data = json.loads(need_shared(MANIFESTS / name).read_text())
    tensors = {
        key: torch.empty(info["shape"], dtype=getattr(torch, info["dtype"]), device="meta")
        for key, info in data["keys"].items()
    }
    return StateDictSource(tensors, origin=name)


def random_transformer(config: TransformerConfig, seed: int = 0) -> PixArtTransformer:
    return randomize_(PixArtTransformer(config), seed)


def diffusers_twin(model: PixArtTransformer):
    """diffusers' PixArtTransformer2DModel holding the same weights (converted by the key table)."""
    from diffusers import PixArtTransformer2DModel

    c = model.config
    twin = PixArtTransformer2DModel(
        num_attention_heads=c.num_heads,
        attention_head_dim=c.head_dim,
        in_channels=c.in_channels,
        out_channels=c.out_channels,
        num_layers=c.depth,
        sample_size=c.sample_size,
        patch_size=c.patch_size,
        caption_channels=c.caption_channels,
        cross_attention_dim=c.hidden_size,
        use_additional_conditions=c.micro_conditions,
        interpolation_scale=c.interpolation_scale,
    )
    weights = {k: v for k, v in to_diffusers(model.state_dict()).items() if k not in REFERENCE_ONLY}
    twin.load_state_dict(weights, strict=True)
    return twin.eval()
