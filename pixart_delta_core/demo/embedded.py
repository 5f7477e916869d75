"""The embedded model: a small PixArt-δ trained here on the shapes world, shipped inside the pack.

Its files sit in ``pixart_delta_core/embedded_model/`` (the model card there says how each was made):
a TAESD-architecture autoencoder in ComfyUI's single-file layout, a tiny T5 encoder in the HF folder
layout with T5's own tokenizer, the PixArt-α-layout teacher, the LCM student distilled from it, and a
ControlNet-Transformer trained on the world's edge maps. ``write_t5`` makes the T5 encoder: random (it
is frozen during training, and the transformer learns from whatever features it gives), from a seed, but
for its relative-position bias, which keeps each head's attention within a window of neighbouring words.
The files' names and paths live in ``embedded_files`` (no torch, for the command line's help).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..errors import InputError
from ..text.t5_config import T5EncoderConfig
from .random_weights import t5_weights

EMBEDDED_T5 = T5EncoderConfig(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
# Each head's window of relative positions (key word - query word): two look back, two look ahead. A random
# bias (N(0, 1) a bucket) spreads attention over the whole caption, so a word's features hardly say which
# shape it belongs to ("red" of the first shape or of the second); within a window, "circle" carries the
# "large red" before it and "left" the "circle at the top" before it.
T5_WINDOWS = ((-3, 0), (-6, 0), (0, 3), (0, 6))
OUTSIDE_WINDOW = -8.0  # the bias outside a head's window: attention there is e^-8 of that inside
POSITION_BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"  # shared by all layers
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "LICENSE", "NOTICE")


def windowed_position_bias(config: T5EncoderConfig, windows: tuple[tuple[int, int], ...]) -> Tensor:
    """A T5 encoder's relative-attention bias table [buckets, heads] that keeps head h's attention on the words
    at relative positions windows[h] = (first, last) (key position - query position, ends included): 0 there,
    ``OUTSIDE_WINDOW`` elsewhere. Buckets are T5's own (bidirectional; transformers' ``T5Attention``).

    Raises InputError for a window count other than the head count, or a window reaching past T5's exact
    buckets (there one bucket holds several distances).
    """
    from transformers.models.t5.modeling_t5 import T5Attention

    buckets = config.relative_attention_num_buckets
    exact = buckets // 4  # bidirectional: half the buckets a direction, half of those one distance each
    if len(windows) != config.num_heads or any(max(-first, last) >= exact for first, last in windows):
        raise InputError(f"expected {config.num_heads} windows within +-{exact - 1} words, found {windows}")
    table = torch.full((buckets, config.num_heads), OUTSIDE_WINDOW)
    for head, (first, last) in enumerate(windows):
        distances = torch.arange(first, last + 1)
        table[
            T5Attention._relative_position_bucket(distances, True, buckets, config.relative_attention_max_distance),
            head,
        ] = 0.0
    return table


def write_t5(
    folder: Path,
    tokenizer: Path,
    seed: int = 0,
    config: T5EncoderConfig = EMBEDDED_T5,
    windows: tuple[tuple[int, int], ...] | None = T5_WINDOWS,
) -> Path:
    """A random T5-v1.1 encoder in the HF folder layout (config.json, model.safetensors in fp16) with the
    tokenizer files copied from ``tokenizer``; returns ``folder``. Its weights are random from ``seed``, but
    for its position bias: ``windowed_position_bias(config, windows)``, or random too where ``windows`` is None
    (the T5 of the embedded teacher's first three runs)."""
    from transformers import T5Config

    folder.mkdir(parents=True, exist_ok=True)
    weights = t5_weights(config, seed)
    if windows is not None:
        weights[POSITION_BIAS] = windowed_position_bias(config, windows)
    weights = {k: v.half().contiguous() for k, v in weights.items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    hf = T5Config(**config.transformers_kwargs(), architectures=["T5EncoderModel"], torch_dtype="float16")
    (folder / "config.json").write_text(json.dumps(hf.to_dict(), indent=1, sort_keys=True) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer / name, folder / name)
    return folder


PICTURE = {"width": 128, "height": 128, "resolution_binning": False}  # what the models were trained at (no bins)
TRAINING_SCENES = 8000  # the world's scenes the models were trained on: seeds 0 .. 7999 (held-out prompts avoid them)
