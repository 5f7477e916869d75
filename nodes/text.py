"""Prompts as ComfyUI CONDITIONING, and CONDITIONING back into the engine's caption embeddings.

CONDITIONING is ``[[embeddings [B, L, C], {extra}]]``. This pack's encoder puts the caption mask
under ``"attention_mask"`` ([B, L], 1 = real token); core ``CLIPTextEncode`` with a ``pixart``
CLIPLoader gives no mask (every token is real, no padding) and may add ``"width"``/``"height"``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from ..pixart_delta_core.errors import InputError
from ..pixart_delta_core.models.transformer_config import TransformerConfig
from ..pixart_delta_core.text.encoder import TextEmbedding
from . import host
from .loaders import T5_TYPE, PixArtT5

log = logging.getLogger(__name__)

MASK_KEY = "attention_mask"
MAX_TOKENS = 512  # T5's tokenizer limit; PixArt-α/δ read 120 tokens, PixArt-Σ 300


class T5TextEncode:
    """A prompt through T5, as PixArt reads it: lower-cased, tokenized, padded to the caption length, masked."""

    DESCRIPTION = (
        "Encodes a prompt with T5 the way the reference PixArt code does: lower-cased (optionally cleaned), "
        "truncated or padded to max_tokens, with the padding masked out. Use one for the positive prompt and, "
        "for guidance, optionally one for the negative."
    )
    CATEGORY = "PixArt-δ/conditioning"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("T5 caption embeddings, with their mask under 'attention_mask'.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The prompt."}),
                "t5": (T5_TYPE, {"tooltip": "The T5 encoder from PixArt-δ T5 Loader."}),
                "max_tokens": (
                    "INT",
                    {
                        "default": 120,
                        "min": 1,
                        "max": MAX_TOKENS,
                        "tooltip": "Caption length in T5 tokens: 120 for PixArt-α/δ, 300 for PixArt-Σ. Longer "
                        "prompts are cut (a warning says what was dropped).",
                    },
                ),
                "clean_caption": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Clean the prompt as the training captions were (drops URLs, HTML, @handles, "
                        "most punctuation runs...). Off: lower-cased and stripped only.",
                    },
                ),
            },
            "optional": {
                "low_memory": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Take T5 off the GPU as soon as the prompt is encoded, through ComfyUI's model "
                        "management, so the transformer has the memory to itself (the paper's low-memory recipe). "
                        "Off: ComfyUI moves it off only when another model needs the room.",
                    },
                ),
            },
        }

    def encode(
        self, text: str, t5: PixArtT5, max_tokens: int = 120, clean_caption: bool = False, low_memory: bool = False
    ) -> tuple[list]:
        host.load_models([t5.managed])
        caption = t5.encoder.encode([text], max_tokens, clean_caption)
        device = host.intermediate_device()
        embeddings = caption.embeddings.to(device, torch.float32)  # [1, L, C]
        mask = caption.mask.to(device)
        if low_memory:
            host.unload([t5.managed])
        return ([[embeddings, {MASK_KEY: mask, "pooled_output": None}]],)


def single_entry(conditioning: Any, what: str) -> tuple[torch.Tensor, dict]:
    """The one [embeddings, extra] entry of a CONDITIONING (combined or scheduled conditioning is refused)."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise InputError(f"{what}: expected a CONDITIONING (a list of [embeddings, dict]), found {conditioning!r}")
    if len(conditioning) > 1:
        raise InputError(
            f"{what}: this CONDITIONING holds {len(conditioning)} entries (combined, area or scheduled "
            f"conditioning); the PixArt-δ sampler takes one prompt per conditioning"
        )
    embeddings, extra = conditioning[0][0], conditioning[0][1]
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 3:
        found = list(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise InputError(f"{what}: conditioning embeddings must be [batch, tokens, width], found {found}")
    return embeddings, extra


def caption_from(conditioning: Any, config: TransformerConfig, what: str) -> TextEmbedding:
    """The caption a transformer of ``config`` reads from a CONDITIONING (copied, never changed in place)."""
    embeddings, extra = single_entry(conditioning, what)
    batch, tokens, width = embeddings.shape
    if width != config.caption_channels:
        raise InputError(
            f"{what}: the conditioning is {width} wide but the model reads {config.caption_channels}-wide T5 "
            f"captions: encode the prompt with PixArt-δ T5 Text Encode, or core CLIPTextEncode with a CLIPLoader "
            f"of type pixart"
        )
    mask = extra.get(MASK_KEY)
    if mask is None:  # core CLIPTextEncode: every token is real
        mask = torch.ones(batch, tokens, dtype=torch.long)
    else:
        mask = mask.to(torch.long).reshape(-1, mask.shape[-1]).expand(batch, -1)
        if mask.shape[1] > tokens:
            raise InputError(f"{what}: a mask of {mask.shape[1]} tokens for conditioning of {tokens} tokens")
        # Tokens beyond the mask were appended after encoding (core ConditioningConcat): they are real.
        mask = F.pad(mask, (0, tokens - mask.shape[1]), value=1)
    return fit_caption(TextEmbedding(embeddings, mask.to(embeddings.device)), config.caption_length, what)


def fit_caption(caption: TextEmbedding, length: int, what: str) -> TextEmbedding:
    """Drop trailing padding; cut real tokens beyond the model's caption ``length`` (with a warning)."""
    used = caption.mask.any(dim=0).nonzero()
    if used.numel() == 0:
        raise InputError(f"{what}: the caption mask selects no token; a caption needs at least one")
    keep = int(used.max()) + 1
    if keep > length:
        log.warning(
            "%s: %d caption tokens but the model reads %d: the last %d are dropped (encode with max_tokens = %d "
            "to cut the prompt as the reference does)",
            what,
            keep,
            length,
            keep - length,
            length,
        )
        keep = length
    if keep == caption.length:
        return caption
    return TextEmbedding(caption.embeddings[:, :keep], caption.mask[:, :keep])


def image_size_from(conditioning: Any) -> tuple[int, int] | None:
    """(height, width) that core CLIPTextEncodePixArtAlpha puts in the conditioning, for the micro-conditions."""
    _, extra = single_entry(conditioning, "positive")
    height, width = extra.get("height"), extra.get("width")
    return (int(height), int(width)) if height and width else None
