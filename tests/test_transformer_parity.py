"""Parity with diffusers' PixArtTransformer2DModel on identical random weights.

Tolerance: max abs difference <= 1e-4 in fp32 (outputs are O(1)).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pixart_delta_core.errors import InputError
from pixart_delta_core.models.transformer_config import TransformerConfig
from tests.helpers import REAL_WIDTH, TINY, TINY_MS, diffusers_twin, random_transformer

TOLERANCE = 1e-4


def _compare(
    config: TransformerConfig, batch: int, height: int, width: int, lengths: list[int] | None, tokens: int = 16
):
    model = random_transformer(config, seed=3)
    twin = diffusers_twin(model)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(batch, config.in_channels, height, width, generator=g)
    t = torch.linspace(999, 1, batch)
    caption = torch.randn(batch, tokens, config.caption_channels, generator=g)
    mask = None
    if lengths is not None:
        mask = torch.zeros(batch, tokens, dtype=torch.long)
        for row, n in enumerate(lengths):
            mask[row, :n] = 1
    added = None
    if config.micro_conditions:
        added = {
            "resolution": torch.tensor([[height * 8.0, width * 8.0]]).repeat(batch, 1),
            "aspect_ratio": torch.tensor([[height / width]]).repeat(batch, 1),
        }
    with torch.no_grad():
        ours = model(x, t, caption, mask)
        theirs = twin(
            x, encoder_hidden_states=caption, timestep=t, encoder_attention_mask=mask, added_cond_kwargs=added
        ).sample
    assert ours.shape == theirs.shape == (batch, config.out_channels, height, width)
    diff = (ours - theirs).abs().max().item()
    assert diff <= TOLERANCE, f"max abs difference {diff:.3g} > {TOLERANCE}"
    return ours


@pytest.mark.parametrize("config", [TINY, TINY_MS], ids=["no-micro", "micro"])
@pytest.mark.parametrize(
    ("batch", "height", "width", "lengths"),
    [(1, 16, 16, None), (3, 16, 24, [3, 16, 9]), (2, 24, 8, [1, 5])],
    ids=["square-unmasked", "wide-masked-batch3", "tall-masked"],
)
def test_tiny_configs_match_diffusers(config, batch, height, width, lengths) -> None:
    _compare(config, batch, height, width, lengths)


def test_real_width_1152_with_16_heads_matches_diffusers() -> None:
    _compare(REAL_WIDTH, batch=2, height=16, width=12, lengths=[4, 11])


def test_training_size_positions_and_sigma_scale_match_diffusers() -> None:
    sigma_256 = replace(TINY, caption_length=300, sample_size=32, interpolation_scale=0.5)
    _compare(sigma_256, batch=1, height=32, width=32, lengths=[7])


def test_mask_padding_does_not_change_the_result() -> None:
    """A caption padded with masked tokens gives what the unpadded caption gives."""
    model = random_transformer(TINY)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    caption = torch.randn(1, 5, TINY.caption_channels, generator=g)
    padded = torch.cat([caption, torch.randn(1, 11, TINY.caption_channels, generator=g)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 11])
    t = torch.tensor([500.0])
    with torch.no_grad():
        assert torch.allclose(model(x, t, caption), model(x, t, padded, mask), atol=1e-5)


def test_impossible_latent_sizes_are_refused() -> None:
    model = random_transformer(TINY)
    with pytest.raises(InputError, match="multiples of the patch size"):
        model(torch.zeros(1, 4, 15, 16), torch.tensor([1.0]), torch.zeros(1, 4, TINY.caption_channels))


def test_a_caption_mask_that_selects_nothing_is_refused() -> None:
    model = random_transformer(TINY)
    with pytest.raises(InputError, match="selects no token"):
        model(
            torch.zeros(1, 4, 16, 16), torch.tensor([1.0]), torch.zeros(1, 4, TINY.caption_channels), torch.zeros(1, 4)
        )
