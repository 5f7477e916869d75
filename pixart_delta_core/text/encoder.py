"""Prompts to PixArt caption embeddings: the T5 tokenizer and T5-v1.1 encoder (docs/REFERENCE.md §2).

Prompts are prepared as the reference does (lower-cased, optionally cleaned), padded or truncated to
the model's caption length (120 tokens for α/δ, 300 for Σ) and encoded with their attention mask.
The encoder only runs up to the longest real prompt in the batch: T5's outputs at real tokens do not
depend on the padding after them, so the rest is zeros with mask 0, as PixArt's cross-attention never
reads it.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoints.detection import DetectedCheckpoint
from ..devices import parse_dtype
from ..errors import CheckpointError, InputError
from ..quant.quantization import Quantization
from .captions import prepare_prompt
from .embedding import TextEmbedding
from .t5 import Checkpoint, inspect_t5, load_t5
from .t5_config import T5_V1_1_XXL, T5EncoderConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, T5EncoderModel

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
_GIVE_TOKENIZER = "give its folder (--tokenizer on the command line, tokenizer= in Python)"
_WHERE_TOKENIZERS_ARE = (
    "a folder with tokenizer.json or spiece.model: ComfyUI ships one in comfy/text_encoders/t5_tokenizer, "
    "an HF T5 folder has its own, a PixArt diffusers repository has one in tokenizer/"
)


class TextEncoder:
    """The T5 tokenizer and encoder together: ``encode`` turns prompts into a ``TextEmbedding``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, model: T5EncoderModel, dtype: torch.dtype) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self._dtype = dtype

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the encoder was loaded in (in fp16 its feed-forward output projections stay fp32)."""
        return self._dtype

    @property
    def width(self) -> int:
        """Channels of each token's embedding (4096 for T5-XXL)."""
        return self.model.config.d_model

    def to(self, device: torch.device | str) -> TextEncoder:
        """Move the encoder to ``device`` (in place) and return it."""
        self.model.to(device)
        return self

    def tokenize(
        self, prompts: Sequence[str], max_length: int, clean_caption: bool = False, what: str = "prompt"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask [B, n], n the longest prompt's token count (at most ``max_length``); a prompt that lost
        tokens is warned of as ``what`` ("prompt", "negative prompt") with its number, counted from 1."""
        if max_length < 1:
            raise InputError(f"caption length must be at least 1 token, found {max_length}")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise InputError("no prompts to encode: expected at least one (an empty string is a valid prompt)")
        texts = [prepare_prompt(p, clean_caption) for p in prompts]
        batch = self.tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
        mask = batch.attention_mask.long()
        full = [(i, texts[i]) for i, n in enumerate(mask.sum(dim=1).tolist()) if n == max_length]
        self._warn_if_truncated(full, max_length, what)
        return batch.input_ids, mask

    def _warn_if_truncated(self, full: list[tuple[int, str]], max_length: int, what: str) -> None:
        """Warn once for each text that lost tokens, naming the prompts that hold it by their numbers from 1 (as a
        user counts them: the first --prompt is prompt 1); only those that fill the caption (index, text) can have."""
        if not full:
            return
        numbers: dict[str, list[int]] = {}  # one negative prompt for every prompt is one warning
        for i, text in full:
            numbers.setdefault(text, []).append(i + 1)
        for text, ids in zip(numbers, self.tokenizer(list(numbers), verbose=False).input_ids, strict=True):
            dropped = len(ids) - max_length
            if dropped > 0:
                lost = _excerpt(self.tokenizer.decode(ids[max_length - 1 : -1]))
                several = len(numbers[text]) > 1
                log.warning(
                    "%s%s %s %s %d tokens long but the model reads %d: %d tokens were dropped, from %r",
                    what,
                    "s" * several,
                    ", ".join(map(str, numbers[text])),
                    "are" if several else "is",
                    len(ids),
                    max_length,
                    dropped,
                    lost,
                )

    def encode(
        self, prompts: Sequence[str], max_length: int, clean_caption: bool = False, what: str = "prompt"
    ) -> TextEmbedding:
        """Prompts -> embeddings [B, max_length, width] and mask [B, max_length] (docs/REFERENCE.md §2); ``what``
        they are, for the warning of a prompt that lost tokens (``tokenize``)."""
        ids, mask = self.tokenize(prompts, max_length, clean_caption, what)  # [B, n], n <= max_length
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.no_grad():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, n, C]
        return TextEmbedding(hidden.masked_fill(mask[..., None] == 0, 0), mask).padded(max_length)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The T5 tokenizer in a folder (or beside a tokenizer.json / spiece.model), from local files only."""
    from transformers import AutoTokenizer, T5Tokenizer

    path = Path(path)
    folder = path.parent if path.is_file() and path.name in TOKENIZER_FILES else path
    if not folder.is_dir() or not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{path}: no T5 tokenizer there: expected {_WHERE_TOKENIZERS_ARE}")
    if not (folder / "tokenizer.json").is_file() and not _has_protobuf():
        raise CheckpointError(
            f"{folder}: this tokenizer comes as spiece.model only, and reading one needs the protobuf package: "
            f"install it (pip install protobuf), or pass a folder with tokenizer.json"
        )
    try:
        # A folder with spiece.model alone may carry no tokenizer_config.json to say "T5": then the class is named.
        reader = AutoTokenizer if (folder / "tokenizer.json").is_file() else T5Tokenizer
        tokenizer = reader.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, ImportError, RuntimeError) as err:
        raise CheckpointError(f"{folder}: cannot read the T5 tokenizer: {err}") from err
    pad, eos = T5_V1_1_XXL.pad_token_id, T5_V1_1_XXL.eos_token_id
    if (tokenizer.pad_token_id, tokenizer.eos_token_id) != (pad, eos) or tokenizer("").input_ids != [eos]:
        raise CheckpointError(
            f"{folder}: not a T5 tokenizer: expected padding as token {pad} and end-of-text as token {eos}, with "
            f"an empty text encoded as end-of-text alone; found padding {tokenizer.pad_token!r} = "
            f"{tokenizer.pad_token_id}, end-of-text {tokenizer.eos_token!r} = {tokenizer.eos_token_id}"
        )
    return tokenizer


def _has_protobuf() -> bool:
    try:
        return importlib.util.find_spec("google.protobuf") is not None
    except ModuleNotFoundError:  # no ``google`` namespace at all
        return False


def find_tokenizer(weights: str | Path) -> Path:
    """The tokenizer folder that comes with T5 weights: in an HF folder, or ``tokenizer/`` beside its weights."""
    weights = Path(weights)
    if weights.is_dir():
        candidates = [weights, weights / "tokenizer", weights.parent / "tokenizer"]
    elif weights.name.startswith("model") and (weights.parent / "config.json").is_file():
        candidates = [weights.parent, weights.parent.parent / "tokenizer"]  # a file of an HF folder
    else:
        candidates = []
    for folder in candidates:
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            return folder
    looked = f"looked in {', '.join(str(c) for c in candidates)}" if candidates else "a single file carries none"
    raise CheckpointError(f"{weights}: no T5 tokenizer found ({looked}): {_GIVE_TOKENIZER}, {_WHERE_TOKENIZERS_ARE}")


def _excerpt(text: str, limit: int = 60) -> str:
    """The start of ``text``, at most ``limit`` characters, marked when cut (a warning stays one short line)."""
    return text if len(text) <= limit else text[:limit].rstrip() + "..."


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, found: DetectedCheckpoint[T5EncoderConfig]) -> None:
    """Raise CheckpointError when ``tokenizer`` has more tokens than the T5 weights ``found`` embed."""
    vocab = found.config.vocab_size
    if len(tokenizer) > vocab:
        raise CheckpointError(
            f"{found.tensors.origin}: the tokenizer has {len(tokenizer)} tokens but the encoder embeds only {vocab}: "
            f"they do not belong together"
        )


def load_text_encoder(
    checkpoint: Checkpoint | DetectedCheckpoint[T5EncoderConfig],
    dtype: str | torch.dtype = "bf16",
    device: torch.device | str = "cpu",
    tokenizer: str | Path | PreTrainedTokenizerBase | None = None,
    quantization: Quantization | str = Quantization.NONE,
) -> TextEncoder:
    """Load T5 weights (single file, HF folder, tensors, or as ``inspect_t5`` found them) and their
    tokenizer (found beside a path, or given).

    ``quantization`` int8 or nf4 quantizes the encoder's linear layers while they load (``dtype`` computes).
    """
    from transformers import PreTrainedTokenizerBase

    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        if tokenizer is None and not isinstance(checkpoint, (str, Path)):
            raise InputError(
                f"T5 weights given as tensors carry no tokenizer: {_GIVE_TOKENIZER}, {_WHERE_TOKENIZERS_ARE}"
            )
        tokenizer = load_tokenizer(tokenizer if tokenizer is not None else find_tokenizer(checkpoint))
    found = checkpoint.expect(T5EncoderConfig) if isinstance(checkpoint, DetectedCheckpoint) else inspect_t5(checkpoint)
    check_tokenizer_fits(tokenizer, found)
    torch_dtype = parse_dtype(dtype)
    return TextEncoder(tokenizer, load_t5(found, torch_dtype, device, quantization), torch_dtype)
