"""ComfyUI CONDITIONING read and written in one place: caption embeddings, mask, image size, control.

CONDITIONING is ``[[embeddings [B, L, C], {extra}]]``. This pack's encoder puts the caption mask
under ``"attention_mask"`` ([B, L], 1 = real token); core ``CLIPTextEncode`` with a ``pixart``
CLIPLoader gives no mask (every token is real, no padding) and core ``CLIPTextEncodePixArtAlpha``
adds ``"width"``/``"height"``. PixArt-δ Apply ControlNet leaves a ``ControlImage`` under
``CONTROL_KEY`` (in copies, never in the input's own dict). The control image can only be fitted to
the generation size once that size is known, so the sampler encodes it: resized and centre-cropped,
through the core VAE (posterior mean), scaled.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..pixart_delta_core.errors import InputError
from ..pixart_delta_core.models.transformer_config import TransformerConfig
from ..pixart_delta_core.pipeline.images import prepare_image, warn_if_cropped
from ..pixart_delta_core.sampling.samplers import ControlSchedule
from ..pixart_delta_core.text.embedding import TextEmbedding

if TYPE_CHECKING:
    from ..pixart_delta_core.models.transformer import PixArtTransformer
    from .sockets import PixArtControlNet

log = logging.getLogger(__name__)

MASK_KEY = "attention_mask"
CONTROL_KEY = "pixart_delta_control"


def from_caption(caption: TextEmbedding, device: torch.device) -> list:
    """A CONDITIONING holding ``caption`` on ``device`` (embeddings in fp32, as ComfyUI keeps them)."""
    embeddings = caption.embeddings.to(device, torch.float32)  # [B, L, C]
    return [[embeddings, {MASK_KEY: caption.mask.to(device), "pooled_output": None}]]


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
    keep = caption.used_length
    if keep == 0:
        raise InputError(f"{what}: the caption mask selects no token; a caption needs at least one")
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
    return caption.truncated(keep)


def image_size_from(conditioning: Any) -> tuple[int, int] | None:
    """(height, width) that core CLIPTextEncodePixArtAlpha puts in the conditioning, for the micro-conditions."""
    _, extra = single_entry(conditioning, "positive")
    height, width = extra.get("height"), extra.get("width")
    return (int(height), int(width)) if height and width else None


class ControlImage:
    """A ControlNet, its control image (IMAGE [B, H, W, C] in 0..1) and the VAE to encode it, with the
    strength and the fraction of the steps where it acts: what a CONDITIONING carries under ``CONTROL_KEY``."""

    def __init__(
        self, controlnet: PixArtControlNet, image: torch.Tensor, vae: Any, strength: float, start: float, end: float
    ) -> None:
        self.controlnet = controlnet
        self.image = image
        self.vae = vae
        self.strength = strength
        self.start = start
        self.end = end

    def latent(self, height: int, width: int, scaling_factor: float) -> torch.Tensor:
        """The control latent for an image of ``height`` x ``width`` px: fitted, VAE-encoded (mean), scaled."""
        image = self.image.movedim(-1, 1)  # [B, C, H, W]
        warn_if_cropped("control image", image, height, width)
        pixels = prepare_image(image, height, width)  # [B, 3, height, width] in [-1, 1]
        raw = self.vae.encode(((pixels + 1) / 2).movedim(1, -1))  # core VAE: IMAGE in 0..1 -> raw latents
        return raw.float() * scaling_factor  # [B, latent channels, height / downscale, width / downscale]

    def schedule(self, base: PixArtTransformer, latent: torch.Tensor) -> ControlSchedule:
        """The sampler's control for ``base`` (loaded on its device), from the control latent."""
        return ControlSchedule(self.controlnet.controlnet.hook(base, latent, self.strength), self.start, self.end)


def control_in(conditioning: Any, what: str) -> ControlImage | None:
    """The control a CONDITIONING carries, or None."""
    return single_entry(conditioning, what)[1].get(CONTROL_KEY)


def control_from(positive: Any, negative: Any | None) -> ControlImage | None:
    """The control the conditioning carries; the negative may carry the same one or none (both passes get it)."""
    control = control_in(positive, "positive")
    if negative is not None:
        other = control_in(negative, "negative")
        if other is not None and other is not control:
            raise InputError(
                "the negative carries a different ControlNet than the positive: PixArt-δ applies one control to "
                "both passes; apply it once with PixArt-δ Apply ControlNet, feeding both positive and negative"
            )
    return control


def with_control(conditioning: list, control: ControlImage) -> list:
    """A copy of ``conditioning`` whose dict carries ``control`` (the embeddings are shared, never changed)."""
    return [[embeddings, {**extra, CONTROL_KEY: control}] for embeddings, extra in conditioning]
