"""The embedded T5 (demo.embedded.write_t5): random weights but for a position bias that keeps each head's
attention within its window of neighbouring words, and the shipped folder is exactly what write_t5 writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import T5EncoderModel

from pixart_delta_core.demo.embedded import EMBEDDED_T5, T5_WINDOWS, windowed_position_bias, write_t5
from pixart_delta_core.demo.embedded_files import embedded_path
from pixart_delta_core.errors import InputError
from pixart_delta_core.text.encoder import load_tokenizer

SHIPPED = embedded_path("shapes-t5")
PROMPT = "a large red circle at the top left and a small blue square at the bottom right, on a black background"


def attention_outside_windows(folder: Path) -> float:
    """The largest share of any word's attention, in any layer and head, that falls outside its head's window."""
    model = T5EncoderModel.from_pretrained(folder, torch_dtype=torch.float32, attn_implementation="eager")
    tokens = load_tokenizer(folder)([PROMPT], return_tensors="pt")
    with torch.no_grad():
        attentions = model(**tokens, output_attentions=True).attentions
    positions = torch.arange(tokens.input_ids.shape[1])
    relative = positions[None, :] - positions[:, None]  # key position - query position
    outside = torch.stack([(relative < first) | (relative > last) for first, last in T5_WINDOWS])
    return max(float((layer[0] * outside).sum(-1).max()) for layer in attentions)


def test_each_head_attends_within_its_window(tmp_path: Path) -> None:
    assert attention_outside_windows(write_t5(tmp_path / "windowed", SHIPPED)) < 0.05
    # the same T5 with a random position bias spreads its attention: the measure above can fail
    assert attention_outside_windows(write_t5(tmp_path / "random", SHIPPED, windows=None)) > 0.3


def test_the_shipped_t5_is_what_write_t5_writes(tmp_path: Path) -> None:
    written = load_file(str(write_t5(tmp_path / "t5", SHIPPED) / "model.safetensors"))
    shipped = load_file(str(SHIPPED / "model.safetensors"))
    assert written.keys() == shipped.keys()
    assert all(torch.equal(written[key], shipped[key]) for key in written)
    assert (tmp_path / "t5" / "config.json").read_text() == (SHIPPED / "config.json").read_text()


@pytest.mark.parametrize("windows", [T5_WINDOWS[:3], ((-8, 0), (0, 0), (0, 0), (0, 0))])
def test_windows_must_fit_the_heads_and_the_exact_buckets(windows) -> None:
    with pytest.raises(InputError, match=r"expected 4 windows within \+-7 words"):
        windowed_position_bias(EMBEDDED_T5, windows)
