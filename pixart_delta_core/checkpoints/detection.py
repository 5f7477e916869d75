"""Detection shared by every model: the generic detected-checkpoint result, finding the one key prefix a model
sits under, reading shapes, counting numbered blocks, naming look-alikes.

Each model's ``<model>_config.py`` detects with these and returns a ``DetectedCheckpoint`` of its config.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Generic, Protocol, TypeVar

from ..errors import CheckpointError, InputError, OtherKindError, give_as
from .sources import TensorSource

log = logging.getLogger(__name__)


class ModelConfig(Protocol):
    """What every model's frozen config offers detection: a one-line description."""

    def describe(self) -> str: ...


ConfigT = TypeVar("ConfigT", bound=ModelConfig)
OtherConfigT = TypeVar("OtherConfigT", bound=ModelConfig)


@dataclass(frozen=True)
class DetectedCheckpoint(Generic[ConfigT]):
    """A recognised checkpoint, read without its weights: what every model's ``detect_*`` returns.

    ``config``: the model's frozen config, read from the weights (and a config file or hints where the
    weights are silent). ``layout``: how the file names its tensors (the model's layout Enum). ``prefix``:
    the key prefix the model sat under in the file (``""`` for none). ``tensors``: the model's tensors in
    the engine's names (prefix removed, layout renamed), ready for ``load_strict``. ``ignored``: keys of
    ``tensors`` the loader skips (training leftovers, a T5's decoder). ``note``: what detection adds to
    the config's description (e.g. where a value the weights cannot hold came from).
    """

    config: ConfigT
    layout: Enum
    prefix: str
    tensors: TensorSource
    ignored: tuple[str, ...] = ()
    note: str = ""

    @property
    def parameters(self) -> int:
        """How many parameters the model's tensors hold (the ignored ones not counted)."""
        ignored = set(self.ignored)
        return sum(math.prod(shape) for key, shape in self.tensors.shapes.items() if key not in ignored)

    def describe(self) -> str:
        """One line: the layout, where the keys were, the config, and the parameters as stored."""
        where = f", keys under {self.prefix!r}" if self.prefix else ""
        note = f" ({self.note})" if self.note else ""
        dtypes = sorted({str(d).removeprefix("torch.") for d in self.tensors.dtypes.values()})
        return (
            f"{self.layout.value} layout{where}: {self.config.describe()}{note}; "
            f"{_count(self.parameters)} parameters stored as {', '.join(dtypes)}"
        )

    def expect(self, config_type: type[OtherConfigT]) -> DetectedCheckpoint[OtherConfigT]:
        """This detection, typed as one of a ``config_type`` model; InputError when it found another model."""
        if not isinstance(self.config, config_type):
            raise InputError(
                f"{self.tensors.origin}: expected a detected checkpoint of a {config_type.__name__}, found one of a "
                f"{type(self.config).__name__} ({self.describe()})"
            )
        return self  # type: ignore[return-value]  # the config's type was checked just above


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def find_prefix(
    source: TensorSource,
    anchors: Sequence[str],
    model: str,
    plural: str,
    expected: str,
    *,
    not_under: tuple[str, ...] = (),
    explain: Callable[[TensorSource], str | None] | None = None,
) -> tuple[str, str]:
    """The one key prefix under which ``source`` holds ``model``, and the anchor found there.

    A key ``{prefix}{anchor}``, with ``prefix`` empty or ending in ``"."``, marks a model under ``prefix``;
    each key counts for the first of ``anchors`` it ends with, and not at all when its prefix ends with one
    of ``not_under`` (the part of another model, e.g. a T5's ``decoder.``). ``model`` ("a VAE") and
    ``plural`` ("VAEs") name the model in errors; ``expected`` says which keys were looked for.

    Raises CheckpointError: when no anchor is found (saying what the file looks like: ``explain(source)``
    if it says, else ``identify``), or when several are (naming the prefixes, or the keys, seen).
    """
    found: set[tuple[str, str]] = set()
    for key in source.shapes:
        for anchor in anchors:
            prefix = key[: len(key) - len(anchor)]
            if key.endswith(anchor) and (not prefix or prefix.endswith(".")):
                if not prefix.endswith(not_under):
                    found.add((prefix, anchor))
                break
    if not found:
        said = explain(source) if explain is not None else None
        what, kind = (said, None) if said else _identified(source, expected)
        if kind is not None:  # a model of a kind the pack takes elsewhere: the error says where
            raise OtherKindError(f"{source.origin}: not {model}: {what}", kind)
        raise CheckpointError(f"{source.origin}: not {model}: {what}")
    if len(found) > 1:
        prefixes = sorted(prefix for prefix, _ in found)
        seen = f"under {prefixes}" if len(set(prefixes)) == len(found) else f"found {sorted(p + a for p, a in found)}"
        raise CheckpointError(f"{source.origin}: ambiguous: it holds several {plural} ({seen}); expected one")
    return found.pop()


def under_prefix(source: TensorSource, prefix: str) -> TensorSource:
    """The tensors of ``source`` under ``prefix``, named without it; logs how many others are left aside."""
    view = source.without_prefix(prefix)
    others = len(source) - len(view)
    if others:
        log.info("%s: using the %d tensors under %r, ignoring %d others", source.origin, len(view), prefix, others)
    return view


def shape_of(source: TensorSource, key: str, ndim: int, model: str = "a PixArt transformer") -> tuple[int, ...]:
    """The shape of a tensor that detection needs, or an error naming it."""
    shape = source.shapes.get(key)
    if shape is None:
        raise CheckpointError(f"{source.origin}: {model} needs {key!r}, which is missing")
    if len(shape) != ndim:
        raise CheckpointError(f"{source.origin}: {key!r} should have {ndim} dimensions, found shape {list(shape)}")
    return shape


def count_numbered(source: TensorSource, prefix: str, what: str) -> int:
    """How many numbered modules ``{prefix}0.``, ``{prefix}1.``... ``source`` holds; none may be missing."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in source.shapes if (m := pattern.match(k))}
    if not indices:
        raise CheckpointError(f"{source.origin}: no {what} ({prefix}N.*) found")
    count = max(indices) + 1
    missing = sorted(set(range(count)) - indices)
    if missing:
        raise CheckpointError(
            f"{source.origin}: {what} {missing} are missing: found {what} 0..{count - 1} except those "
            f"(a truncated or partial checkpoint?)"
        )
    return count


# Other model families whose keys overlap PixArt's own anchors (x_embedder.proj, adaln_single, blocks.N.attn):
# (a key fragment only that family has, the family). Checked before anything is taken for PixArt.
_FAMILIES = (
    ("patchify_proj.", "LTX-Video (Lightricks' video transformer, adaln_single like diffusers' PixArt)"),
    ("caption_norm.", "Sana (a linear-attention transformer, PixArt-like keys)"),
    ("attention_y_norm.", "Sana (a linear-attention transformer, PixArt-like keys)"),
    ("inverted_conv.", "Sana (a linear-attention transformer, PixArt-like keys)"),
    ("conv_inverted.", "Sana (a linear-attention transformer, PixArt-like keys)"),
    ("mlp_t5.", "Hunyuan-DiT (x_embedder and t_embedder like PixArt's)"),
    ("text_embedding_padding", "Hunyuan-DiT (x_embedder and t_embedder like PixArt's)"),
    ("time_extra_emb.", "Hunyuan-DiT in diffusers' layout"),
    ("attn.sr.", "PixArt-Σ with key/value token compression (attention sr/norm layers this pack does not run)"),
    ("adaLN_modulation.", "a DiT-style transformer with adaLN-Zero per block (DiT, SiT...), not PixArt's adaLN-single"),
)

# (key fragment, what it is, the pipeline's argument that takes it: a key of errors.GIVEN_AS, None for no model the
# pack runs): checked in order by ``identify``, after ``_FAMILIES``.
_LOOKALIKES = (
    ("controlnet_blocks.", "a PixArt ControlNet adapter without its base model", "controlnet"),
    ("copied_block.", "a PixArt ControlNet without its base model", "controlnet"),
    ("double_blocks.0.", "a Flux transformer", None),
    ("joint_blocks.0.", "an SD3 transformer", None),
    ("x_embedder.proj.weight", "a PixArt transformer", "transformer"),
    ("adaln_single.linear.weight", "a PixArt transformer", "transformer"),
    ("encoder.block.0.layer.0.SelfAttention", "a T5 text encoder", "t5"),
    ("text_model.encoder.layers.", "a CLIP text encoder", None),
    ("label_emb.", "an SDXL UNet", None),
    ("time_embedding.linear_1.", "a diffusers UNet", None),
    ("input_blocks.0.0.weight", "a Stable Diffusion UNet (SD 1.x/2.x)", None),
    ("decoder.up.0.block.0.conv1.weight", "a VAE", "vae"),
    ("post_quant_conv.weight", "a VAE", "vae"),
    ("taesd_decoder.", "a TAESD autoencoder", "vae"),
    ("decoder.layers.0.weight", "a TAESD autoencoder", "vae"),
    ("down_blocks.0.resnets.0.conv1.weight", "a diffusers UNet", None),
    ("lora_", "a LoRA", "loras"),
    ("shared.weight", "a T5 text encoder", "t5"),
)


def other_family(source: TensorSource) -> str | None:
    """The look-alike model family ``source`` belongs to (keys that overlap PixArt's), or None."""
    for fragment, family in _FAMILIES:
        if any(fragment in k for k in source.shapes):
            return family
    return None


def refuse_other_family(source: TensorSource, wanted: str) -> None:
    """CheckpointError naming the family when ``source`` is a look-alike of ``wanted`` (e.g. "a PixArt transformer")."""
    family = other_family(source)
    if family is not None:
        raise CheckpointError(f"{source.origin}: not {wanted}: it looks like {family}, whose keys overlap PixArt's")


def identify(source: TensorSource, expected: str) -> str:
    """A short phrase saying what a state dict looks like, for error messages; ``expected`` names what was wanted.
    For a model the pack takes as another of its files, it says which (``errors.give_as``)."""
    what, kind = _identified(source, expected)
    return what if kind is None else f"{what} ({give_as(kind)})"


def _identified(source: TensorSource, expected: str) -> tuple[str, str | None]:
    """``identify``'s phrase without where to give the model, and the pipeline's argument that takes it (a key of
    ``errors.GIVEN_AS``; None: no model the pack runs, or none known)."""
    if not source.shapes:
        return "the file holds no tensors (an empty state dict)", None
    family = other_family(source)
    if family is not None:
        return f"it looks like {family}", None
    for fragment, what, kind in _LOOKALIKES:
        if any(fragment in k for k in source.shapes):
            return f"it looks like {what}", kind
    sample = ", ".join(sorted(source.shapes)[:3])
    return f"unknown model ({len(source)} tensors, e.g. {sample}); expected {expected}", None
