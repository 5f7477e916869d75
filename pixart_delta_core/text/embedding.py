"""Caption embeddings as plain data: the embeddings and mask the transformer reads (docs/REFERENCE.md §2).

Every padding or trimming of a caption happens here, once: the encoder pads to the model's caption
length, guidance pads the two captions of a pair to one length, the nodes drop a CONDITIONING's
trailing padding and cut what the model cannot read. Imports torch only, so the samplers and the
nodes depend on this data, not on the T5 encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError


@dataclass(frozen=True)
class TextEmbedding:
    """Caption embeddings [B, L, C] (zeros where the mask is 0) and their mask [B, L] (int64, 1 = real token).

    Raises ``InputError`` when the shapes do not fit together.
    """

    embeddings: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 3 or tuple(self.mask.shape) != tuple(self.embeddings.shape[:2]):
            raise InputError(
                f"caption embeddings must be [B, L, C] with a [B, L] mask, found {list(self.embeddings.shape)} "
                f"and {list(self.mask.shape)}"
            )

    @classmethod
    def batched(cls, captions: Sequence[TextEmbedding]) -> TextEmbedding:
        """Captions one after another in the batch, each padded to the longest (for guidance's one forward)."""
        length = max(c.length for c in captions)
        padded = [c.padded(length) for c in captions]
        return cls(torch.cat([c.embeddings for c in padded]), torch.cat([c.mask for c in padded]))

    @property
    def batch_size(self) -> int:
        return self.embeddings.shape[0]

    @property
    def length(self) -> int:
        return self.embeddings.shape[1]

    @property
    def used_length(self) -> int:
        """Tokens up to the last one any caption's mask keeps (0 when the mask keeps none)."""
        used = self.mask.any(dim=0).nonzero()
        return int(used.max()) + 1 if used.numel() else 0

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEmbedding:
        """The same embedding on ``device`` and/or in ``dtype`` (the mask stays int64)."""
        return TextEmbedding(self.embeddings.to(device=device, dtype=dtype), self.mask.to(device=device))

    def padded(self, length: int) -> TextEmbedding:
        """The same captions padded with masked-out zeros to ``length`` tokens (at least ``self.length``)."""
        extra = length - self.length
        if extra == 0:
            return self
        if extra < 0:
            raise InputError(f"cannot pad a caption of {self.length} tokens to {length}: use truncated()")
        return TextEmbedding(F.pad(self.embeddings, (0, 0, 0, extra)), F.pad(self.mask, (0, extra)))

    def truncated(self, length: int) -> TextEmbedding:
        """The first ``length`` tokens of each caption (itself when it is no longer)."""
        if length >= self.length:
            return self
        return TextEmbedding(self.embeddings[:, :length], self.mask[:, :length])

    def repeat(self, times: int) -> TextEmbedding:
        """Each prompt ``times`` times in a row (several images per prompt)."""
        if times < 1:
            raise InputError(f"repeat count must be at least 1, found {times}")
        return TextEmbedding(self.embeddings.repeat_interleave(times, 0), self.mask.repeat_interleave(times, 0))
