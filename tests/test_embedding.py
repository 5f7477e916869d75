"""Caption embeddings as plain data: padding, trimming and batching written once (text/embedding.py)."""

from __future__ import annotations

import pytest
import torch

from pixart_delta_core.errors import InputError
from pixart_delta_core.text.embedding import TextEmbedding


def caption(lengths: list[int], tokens: int, channels: int = 3, seed: int = 0) -> TextEmbedding:
    """Random captions of these real lengths, padded with masked-out zeros to ``tokens``."""
    mask = torch.zeros(len(lengths), tokens, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    g = torch.Generator().manual_seed(seed)
    return TextEmbedding(torch.randn(len(lengths), tokens, channels, generator=g) * mask[..., None], mask)


def test_used_length_is_the_last_token_any_caption_keeps() -> None:
    assert caption([2, 5], 8).used_length == 5
    assert caption([0, 0], 4).used_length == 0
    inner_gap = TextEmbedding(torch.zeros(1, 6, 2), torch.tensor([[1, 0, 0, 1, 0, 0]]))
    assert inner_gap.used_length == 4


def test_truncated_keeps_the_first_tokens() -> None:
    full = caption([3, 6], 8)
    cut = full.truncated(4)
    assert cut.length == 4
    assert torch.equal(cut.embeddings, full.embeddings[:, :4]) and torch.equal(cut.mask, full.mask[:, :4])
    assert full.truncated(8) is full and full.truncated(20) is full


def test_padded_appends_masked_zeros_and_refuses_to_shrink() -> None:
    short = caption([3], 3)
    long = short.padded(7)
    assert long.length == 7 and long.mask.tolist() == [[1, 1, 1, 0, 0, 0, 0]]
    assert torch.equal(long.embeddings[:, :3], short.embeddings) and not long.embeddings[:, 3:].any()
    assert short.padded(3) is short
    with pytest.raises(InputError, match="cannot pad a caption of 3 tokens to 2"):
        short.padded(2)


def test_batched_pads_each_caption_to_the_longest() -> None:
    a, b = caption([2], 2, seed=1), caption([4, 5], 5, seed=2)
    both = TextEmbedding.batched([a, b])
    assert both.batch_size == 3 and both.length == 5
    assert torch.equal(both.embeddings[:1], a.padded(5).embeddings) and torch.equal(both.mask[1:], b.mask)
