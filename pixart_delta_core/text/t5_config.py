"""The T5-v1.1 encoder's configuration, detected from a checkpoint's keys and shapes (docs/REFERENCE.md §2).

Single files (``t5xxl_fp16.safetensors``, bf16, fp8 e4m3fn/e5m2) carry transformers' key names and no
config: the config is T5-v1.1-XXL with its sizes read from the tensors' shapes, so smaller T5-v1.1
encoders load too. Folders bring their ``config.json``. Look-alikes (the original T5's ReLU
feed-forward, UMT5's per-block position bias) are refused.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from typing import Any

from ..checkpoints.config_values import (
    MAX_DEPTH,
    MAX_FEED_FORWARD,
    MAX_HEADS,
    MAX_VOCABULARY,
    MAX_WIDTH,
    check_bool,
    check_float,
    check_int,
)
from ..checkpoints.detection import DetectedCheckpoint, count_numbered, find_prefix, shape_of, under_prefix
from ..checkpoints.layouts import KeyTable, RenamedSource, Rule
from ..checkpoints.sources import TensorSource
from ..errors import CheckpointError
from .t5_scaled_fp8 import dequantized

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class T5EncoderConfig:
    """A T5-v1.1 encoder, in transformers' ``T5Config`` field names: defaults are google/t5-v1_1-xxl, the
    encoder every PixArt model was trained with (only the fields that shape the encoder)."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1

    def __post_init__(self) -> None:
        owner = "T5 config"
        check_int(owner, "vocab_size", self.vocab_size, 1, MAX_VOCABULARY)
        for name, low, high in (
            ("d_model", 1, MAX_WIDTH),
            ("d_kv", 1, MAX_WIDTH),
            ("d_ff", 1, MAX_FEED_FORWARD),
            ("num_layers", 1, MAX_DEPTH),
            ("num_heads", 1, MAX_HEADS),
            ("relative_attention_num_buckets", 1, MAX_HEADS),
            ("relative_attention_max_distance", 1, MAX_WIDTH),
            ("pad_token_id", 0, self.vocab_size - 1),
            ("eos_token_id", 0, self.vocab_size - 1),
        ):
            check_int(owner, name, getattr(self, name), low, high)
        if self.num_heads * self.d_kv > MAX_WIDTH:
            raise CheckpointError(
                f"{owner}: the attention width num_heads x d_kv must be at most {MAX_WIDTH}, found "
                f"{self.num_heads} x {self.d_kv}"
            )
        check_float(owner, "dropout_rate", self.dropout_rate, 1.0, zero=True)
        check_float(owner, "layer_norm_epsilon", self.layer_norm_epsilon, 1.0)
        check_bool(owner, "tie_word_embeddings", self.tie_word_embeddings)
        if self.feed_forward_proj != "gated-gelu":
            raise CheckpointError(
                f"feed_forward_proj {self.feed_forward_proj!r}: PixArt uses T5-v1.1, whose feed-forward is 'gated-gelu'"
            )

    @property
    def is_xxl(self) -> bool:
        """Whether every size is T5-v1.1-XXL's."""
        return self.sizes() == T5_V1_1_XXL.sizes()

    def sizes(self) -> dict[str, int]:
        """The fields a checkpoint's tensor shapes show."""
        return {name: getattr(self, name) for name in _SIZE_FIELDS}

    def transformers_kwargs(self) -> dict[str, Any]:
        """Arguments for transformers' ``T5Config`` of an encoder alone."""
        return {**asdict(self), "is_encoder_decoder": False, "use_cache": False}

    def describe(self) -> str:
        size = "T5-v1.1-XXL" if self.is_xxl else "T5-v1.1"
        return (
            f"{size} encoder, {self.num_layers} layers, width {self.d_model}, {self.num_heads} heads of "
            f"{self.d_kv}, feed-forward {self.d_ff}, vocabulary {self.vocab_size}"
        )


T5_V1_1_XXL = T5EncoderConfig()
_SIZE_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets")


class T5Layout(Enum):
    """How a T5 checkpoint names its tensors."""

    TRANSFORMERS = "transformers"
    BARE_STACK = "bare encoder stack"


_ANCHOR = "block.0.layer.0.SelfAttention.q.weight"
_TRANSFORMERS_ANCHOR = "encoder." + _ANCHOR
# Key prefixes of the parts of a full T5 (encoder-decoder) that the encoder does not use.
UNUSED_PARTS = ("decoder.", "lm_head.")

# A bare encoder stack saved on its own (``block.N...``, ``embed_tokens``) -> T5EncoderModel names.
_STACK_TABLE = KeyTable(
    (
        Rule(("block.{i}",), "encoder.block.{i}"),
        Rule(("final_layer_norm",), "encoder.final_layer_norm"),
        Rule(("embed_tokens",), "shared"),
    )
)
# Files that keep the embedding only under the encoder's name.
_EMBED_ONLY_TABLE = KeyTable((Rule(("encoder.embed_tokens",), "shared"),))


def detect_t5(
    source: TensorSource, config_json: Mapping[str, Any] | None = None
) -> DetectedCheckpoint[T5EncoderConfig]:
    """Find the T5 encoder in ``source`` (any prefix, transformers' or bare-stack names) and its config.

    ``config_json``: a transformers ``config.json`` that comes with the weights; without it the sizes are
    read from the shapes. Raises CheckpointError when ``source`` holds no T5 encoder or several, or a T5
    of another kind than v1.1.
    """
    prefix, anchor = find_prefix(
        source,
        (_TRANSFORMERS_ANCHOR, _ANCHOR),
        "a T5 text encoder",
        "T5 encoders",
        f"T5 keys such as {_TRANSFORMERS_ANCHOR}",
        not_under=("decoder.",),
        explain=_what_it_is,
    )
    view = dequantized(under_prefix(source, prefix))
    layout = T5Layout.TRANSFORMERS if anchor == _TRANSFORMERS_ANCHOR else T5Layout.BARE_STACK
    if layout is T5Layout.BARE_STACK:
        view = RenamedSource(view, _STACK_TABLE)
    elif "shared.weight" not in view.shapes and "encoder.embed_tokens.weight" in view.shapes:
        view = RenamedSource(view, _EMBED_ONLY_TABLE)
    _refuse_other_t5_kinds(view)
    ignored = tuple(k for k in view.shapes if k.startswith(UNUSED_PARTS))
    if ignored:
        log.info(
            "%s: a full T5: ignoring its %d decoder tensors, only the encoder is used", source.origin, len(ignored)
        )
    config = _config_from_json(config_json, source.origin) if config_json else _config_from_shapes(view)
    _check_shapes(config, view)
    return DetectedCheckpoint(config, layout, prefix, view, ignored)


def _what_it_is(source: TensorSource) -> str | None:
    if any(k.endswith("shared.weight") or "SelfAttention" in k for k in source.shapes):
        return "it has T5 names but no encoder block 0 (a decoder only, or a partial file?)"
    return None


def _refuse_other_t5_kinds(view: TensorSource) -> None:
    keys = view.shapes
    if "encoder.block.0.layer.1.DenseReluDense.wi.weight" in keys:
        raise CheckpointError(
            f"{view.origin}: a T5 with a plain ReLU feed-forward (wi, as in the original T5); PixArt uses "
            f"T5-v1.1 (gated-GELU, wi_0 and wi_1)"
        )
    if any(re.match(r"encoder\.block\.[1-9]\d*\.layer\.0\.SelfAttention\.relative_attention_bias", k) for k in keys):
        raise CheckpointError(
            f"{view.origin}: every block has its own relative position bias, as in UMT5; PixArt uses T5-v1.1, "
            f"whose bias lives in block 0 only"
        )
    if "shared.weight" not in keys:
        raise CheckpointError(f"{view.origin}: a T5 encoder without its token embedding (shared.weight is missing)")


def _shape(view: TensorSource, key: str) -> tuple[int, ...]:
    return shape_of(view, key, 2, "a T5 encoder")  # the tensors that sizes are read from are all matrices


def _config_from_shapes(view: TensorSource) -> T5EncoderConfig:
    """T5-v1.1-XXL with every size the tensors show taken from them."""
    vocab, width = _shape(view, "shared.weight")
    depth = count_numbered(view, "encoder.block.", "encoder blocks")
    inner = _shape(view, "encoder.block.0.layer.0.SelfAttention.q.weight")[0]
    buckets, heads = _shape(view, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if buckets != T5_V1_1_XXL.relative_attention_num_buckets:
        # A file without config.json is read as T5-v1.1, whose every size uses 32 buckets: another row count
        # is a bias stored transposed (heads x buckets), which would otherwise read as 32 one-wide heads.
        raise CheckpointError(
            f"{view.origin}: the relative attention bias should be [{T5_V1_1_XXL.relative_attention_num_buckets} "
            f"buckets, heads], found {[buckets, heads]} (stored transposed?)"
        )
    if inner % heads:
        raise CheckpointError(f"{view.origin}: attention width {inner} is not a multiple of its {heads} heads")
    d_ff = _shape(view, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight")[0]
    config = replace(
        T5_V1_1_XXL,
        vocab_size=vocab,
        d_model=width,
        d_kv=inner // heads,
        d_ff=d_ff,
        num_layers=depth,
        num_heads=heads,
        relative_attention_num_buckets=buckets,
    )
    if not config.is_xxl:
        differ = {k: v for k, v in config.sizes().items() if v != getattr(T5_V1_1_XXL, k)}
        log.info("%s: a T5-v1.1 smaller than XXL, sizes read from its tensors: %s", view.origin, differ)
    return config


def _check_shapes(config: T5EncoderConfig, view: TensorSource) -> None:
    """Refuse a config the tensors contradict: sizes from a config.json, or a position bias stored transposed."""
    buckets, heads, inner = config.relative_attention_num_buckets, config.num_heads, config.num_heads * config.d_kv
    expected = {
        "shared.weight": (config.vocab_size, config.d_model),
        "encoder.block.0.layer.0.SelfAttention.q.weight": (inner, config.d_model),
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (buckets, heads),
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": (config.d_ff, config.d_model),
    }
    for key, shape in expected.items():
        found = _shape(view, key)
        if found != shape:
            raise CheckpointError(
                f"{view.origin}: {key} should be {list(shape)} for {config.describe()} "
                f"({buckets} position buckets x {heads} heads, attention width {inner}), found {list(found)}"
            )
    depth = count_numbered(view, "encoder.block.", "encoder blocks")
    if depth != config.num_layers:
        raise CheckpointError(f"{view.origin}: config num_layers {config.num_layers}, found {depth} encoder blocks")


def _config_from_json(config: Mapping[str, Any], origin: str) -> T5EncoderConfig:
    kind = config.get("model_type", "t5")
    if kind != "t5":
        raise CheckpointError(f"{origin}: config.json describes a {kind!r} model; expected a T5 encoder ('t5')")
    if config.get("feed_forward_proj", "relu") != "gated-gelu":
        raise CheckpointError(
            f"{origin}: config.json has feed_forward_proj {config.get('feed_forward_proj', 'relu')!r}; PixArt "
            f"uses T5-v1.1 ('gated-gelu')"
        )
    known = {f.name for f in fields(T5EncoderConfig)}
    try:
        return replace(T5_V1_1_XXL, **{k: v for k, v in config.items() if k in known})
    except CheckpointError as err:
        raise CheckpointError(f"{origin}: config.json: {err}") from None
