"""The ControlNet-Transformer's configuration, detected from a checkpoint (PixArt-δ, docs/REFERENCE.md §4).

Three layouts hold one: the reference full checkpoint (``base_model.*`` + ``controlnet.*``), a
ControlNet-only file (``controlnet.*``) and the diffusers-style adapter (``controlnet_blocks.*``).
The number of copies and the widths come from the weights; ``check_fits`` refuses a ControlNet
that was not made for the base transformer it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from ..checkpoints.config_values import MAX_DEPTH, MAX_FEED_FORWARD, MAX_HEADS, MAX_WIDTH, check_int
from ..checkpoints.detection import DetectedCheckpoint, count_numbered, find_prefix, shape_of
from ..checkpoints.hints import check_names
from ..checkpoints.layouts import BLOCK_RULES, KeyTable, RenamedSource, Rule, prefixed
from ..checkpoints.sources import TensorSource
from ..errors import CheckpointError, PixArtDeltaError
from .transformer_config import HEADS_HINTS, TransformerConfig, num_heads_from

log = logging.getLogger(__name__)

DEFAULT_COPIES = 13  # PixArt-δ copies base blocks 0..12 of 28
CONTROLNET_ROOT = "controlnet."  # our module names: controlnet.{i}.copied_block.*, .before_proj, .after_proj
BASE_PART = "base_model."  # where the reference full checkpoint keeps its frozen base


@dataclass(frozen=True)
class ControlNetConfig:
    """A ControlNet-Transformer: trainable copies of the first base blocks (defaults: PixArt-δ XL/2)."""

    copies: int = DEFAULT_COPIES
    hidden_size: int = 1152
    num_heads: int = 16
    mlp_hidden: int = 4608
    caption_channels: int | None = None  # caption (T5) width of the base it was saved with, when known

    def __post_init__(self) -> None:
        owner = "ControlNet config"
        check_int(owner, "copies", self.copies, 1, MAX_DEPTH)
        check_int(owner, "hidden_size", self.hidden_size, 1, MAX_WIDTH)
        check_int(owner, "num_heads", self.num_heads, 1, MAX_HEADS)
        check_int(owner, "mlp_hidden", self.mlp_hidden, 1, MAX_FEED_FORWARD)
        if self.caption_channels is not None:
            check_int(owner, "caption_channels", self.caption_channels, 1, MAX_WIDTH)
        if self.hidden_size % self.num_heads:
            raise CheckpointError(f"hidden size {self.hidden_size} must be divisible by num_heads {self.num_heads}")

    @classmethod
    def for_base(cls, base: TransformerConfig, copies: int = DEFAULT_COPIES) -> ControlNetConfig:
        """The ControlNet that copies the first ``copies`` blocks of ``base``."""
        config = cls(copies, base.hidden_size, base.num_heads, base.mlp_hidden, base.caption_channels)
        config.check_fits(base)
        return config

    def describe(self) -> str:
        captions = f", saved with a base reading {self.caption_channels}-wide captions" if self.caption_channels else ""
        copies = f"{self.copies} {'copy' if self.copies == 1 else 'copies'}"
        return (
            f"ControlNet {self.hidden_size} wide with {self.num_heads} heads and {copies} "
            f"(MLP {self.mlp_hidden}){captions}"
        )

    def mismatches(self, base: TransformerConfig) -> list[str]:
        """What keeps this ControlNet from driving ``base``; empty when it fits."""
        problems = []
        if self.hidden_size != base.hidden_size:
            problems.append(f"ControlNet is {self.hidden_size} wide; the base transformer is {base.hidden_size} wide")
        if self.num_heads != base.num_heads:
            problems.append(f"ControlNet has {self.num_heads} heads; the base transformer has {base.num_heads}")
        if self.copies >= base.depth:
            problems.append(
                f"ControlNet has {self.copies} copies feeding base blocks 1..{self.copies}; the base transformer "
                f"has depth {base.depth} (at least {self.copies + 1} needed)"
            )
        if self.caption_channels is not None and self.caption_channels != base.caption_channels:
            problems.append(
                f"ControlNet was saved with a base reading {self.caption_channels}-wide captions; the base "
                f"transformer reads {base.caption_channels}-wide captions"
            )
        return problems

    def check_fits(self, base: TransformerConfig, error: type[PixArtDeltaError] = CheckpointError) -> None:
        """Raise ``error`` naming both models when this ControlNet cannot drive ``base``."""
        problems = self.mismatches(base)
        if problems:
            raise error(
                f"the ControlNet does not fit the base transformer: {'; '.join(problems)} "
                f"(ControlNet: {self.describe()}; base transformer: {base.describe()})"
            )


class ControlNetLayout(Enum):
    """How a checkpoint names its ControlNet tensors."""

    FULL = "reference ControlNet-Transformer (the file also holds its base model)"
    REFERENCE = "reference ControlNet-only"
    ADAPTER = "diffusers-style ControlNet adapter"


_REFERENCE_ANCHOR = CONTROLNET_ROOT + "0.after_proj.weight"
_ADAPTER_ROOT = "controlnet_blocks."
_ADAPTER_ANCHOR = _ADAPTER_ROOT + "0.after_proj.weight"
_TRANSFORMER_ANCHORS = ("x_embedder.proj.weight", "adaln_single.linear.weight")
_CAPTION_ANCHORS = ("y_embedder.y_proj.fc1.weight", "caption_projection.linear_1.weight")
_MODEL = "a PixArt ControlNet"


def detect_controlnet(
    source: TensorSource,
    hints: Mapping[str, Any] | None = None,
    base: TransformerConfig | None = None,
    config: Mapping[str, Any] | None = None,
) -> DetectedCheckpoint[ControlNetConfig]:
    """Recognise a PixArt ControlNet in ``source``; ``base`` supplies the heads when the weights cannot.
    ``config`` and ``hints`` as for ``detect_transformer`` (its heads are the only field they give).

    Raises CheckpointError when ``source`` holds no ControlNet or several, a partial one, strays beside it, a
    hint contradicts it, or a hint's name is not one of ``HEADS_HINTS``.
    """
    hints, config = dict(hints or {}), dict(config or {})
    check_names(source.origin, hints, HEADS_HINTS, _MODEL)
    prefix, anchor = find_prefix(
        source,
        (_REFERENCE_ANCHOR, _ADAPTER_ANCHOR),
        _MODEL,
        "ControlNets",
        f"PixArt ControlNet keys such as {_REFERENCE_ANCHOR} or {_ADAPTER_ANCHOR}",
        explain=_what_it_is,
    )
    view = source.without_prefix(prefix)
    if anchor == _ADAPTER_ANCHOR:
        layout, own = ControlNetLayout.ADAPTER, _ADAPTER_ROOT
        tensors: TensorSource = RenamedSource(view.renamed_prefix(own, own), ADAPTER_TABLE)
    else:
        has_base = any(k.startswith(BASE_PART) for k in view.shapes)
        layout, own = (ControlNetLayout.FULL if has_base else ControlNetLayout.REFERENCE), CONTROLNET_ROOT
        tensors = view.renamed_prefix(own, own)
    strays = sorted(k for k in view.shapes if not k.startswith((own, BASE_PART)))
    if strays:
        shown = ", ".join(strays[:8]) + (f", ... ({len(strays)} in all)" if len(strays) > 8 else "")
        raise CheckpointError(f"{source.origin}: unexpected tensors beside the ControlNet's own: {shown}")
    others = len(source) - sum(1 for k in view.shapes if k.startswith(own))
    if others:
        log.info("%s: using the ControlNet under %r, ignoring %d other tensors", source.origin, prefix + own, others)
    return DetectedCheckpoint(_config_from(tensors, source, hints, config, base), layout, prefix, tensors)


def _what_it_is(source: TensorSource) -> str | None:
    """What a file without a ControlNet anchor holds, when it is PixArt's; None to let ``identify`` say."""
    if any("copied_block." in k or _ADAPTER_ROOT in k for k in source.shapes):
        return (
            f"it looks like a partial PixArt ControlNet: copy 0's after_proj ({_REFERENCE_ANCHOR!r} or "
            f"{_ADAPTER_ANCHOR!r}) is missing"
        )
    if any(k.endswith(_TRANSFORMER_ANCHORS) for k in source.shapes):
        return "it is a PixArt transformer without ControlNet copies (load it with the transformer loader)"
    return None


def _config_from(
    tensors: TensorSource,
    source: TensorSource,
    hints: dict[str, Any],
    config: dict[str, Any],
    base: TransformerConfig | None,
) -> ControlNetConfig:
    rows, hidden = shape_of(tensors, _REFERENCE_ANCHOR, 2, _MODEL)
    if rows != hidden:
        raise CheckpointError(f"{source.origin}: {_REFERENCE_ANCHOR!r} should be square, found {[rows, hidden]}")
    fallback = base.num_heads if base is not None and hidden % base.num_heads == 0 else None
    return ControlNetConfig(
        copies=count_numbered(tensors, CONTROLNET_ROOT, "ControlNet copies"),
        hidden_size=hidden,
        num_heads=num_heads_from(tensors, hints, config, hidden, fallback),
        mlp_hidden=shape_of(tensors, CONTROLNET_ROOT + "0.copied_block.mlp.fc1.weight", 2, _MODEL)[0],
        caption_channels=_caption_channels(source),
    )


def _caption_channels(source: TensorSource) -> int | None:
    """The caption width of a base model saved in the same file, if there is exactly one."""
    widths = {s[1] for k, s in source.shapes.items() if k.endswith(_CAPTION_ANCHORS) and len(s) == 2}
    return widths.pop() if len(widths) == 1 else None


# The diffusers-style ControlNet adapter (docs/REFERENCE.md §4): ``before_proj`` exists on block 0 only.
CONTROLNET_ADAPTER: tuple[Rule, ...] = (
    Rule(("controlnet_blocks.{i}.before_proj",), "controlnet.{i}.before_proj"),
    Rule(("controlnet_blocks.{i}.after_proj",), "controlnet.{i}.after_proj"),
    *prefixed(BLOCK_RULES, "controlnet_blocks.{i}.transformer_block.", "controlnet.{i}.copied_block."),
)


ADAPTER_TABLE = KeyTable(CONTROLNET_ADAPTER)


def to_adapter(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reference-layout ControlNet state dict (``controlnet.*``) in the adapter's names, losing nothing."""
    return ADAPTER_TABLE.to_theirs(state_dict)
