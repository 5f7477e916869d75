"""The transformer's configuration, detected from a checkpoint's keys and shapes (docs/REFERENCE.md §1).

Detection never guesses: what the weights do not say must come from a diffusers ``config.json``
or an explicit hint, else it refuses with an error naming what the file looks like.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from ..checkpoints.config_values import (
    MAX_DEPTH,
    MAX_FEED_FORWARD,
    MAX_HEADS,
    MAX_WIDTH,
    check_bool,
    check_float,
    check_int,
    int_text,
)
from ..checkpoints.detection import (
    DetectedCheckpoint,
    count_numbered,
    find_prefix,
    refuse_other_family,
    shape_of,
    under_prefix,
)
from ..checkpoints.hints import check_names, first_given, settle
from ..checkpoints.layouts import BLOCK_RULES, KeyTable, RenamedSource, Rule, prefixed
from ..checkpoints.sources import TensorSource
from ..errors import CheckpointError
from ..vae.vae_config import SD_VAE, SDXL_VAE, VaeConfig

MAX_CAPTION_TOKENS = 4096  # bounds against hand-edited configs: PixArt-α reads 120 tokens, Σ 300
MAX_SAMPLE_SIZE = 1024  # latent pixels per side (8192 image pixels); PixArt-Σ 4K is 512
HEAD_DIM = 72  # every released PixArt model uses 72-wide heads (XL: 1152 = 16 x 72)
ALPHA_TOKENS = 120
SIGMA_TOKENS = 300

# How each detection hint is given on every surface: the errors that ask for one, or refuse one, say so.
GIVEN_AS = {
    "num_heads": "--heads on the command line, the checkpoint loader's heads in ComfyUI, hints={'num_heads': N} "
    "in Python",
    "caption_length": "--caption-length on the command line, the checkpoint loader's caption_length in ComfyUI, "
    "hints={'caption_length': N} in Python",
    "sample_size": "--training-resolution PX or --sample-size PX/8 on the command line, the checkpoint loader's "
    "training_resolution in ComfyUI, hints={'sample_size': PX // 8} in Python",
    "interpolation_scale": "hints={'interpolation_scale': X} in Python",
}
HEADS_HINTS = ("num_heads", "num_attention_heads")  # the heads, by our name or diffusers' config.json name
HINT_NAMES = (*GIVEN_AS, "num_attention_heads")  # every hint the transformer takes: any other name is refused


@dataclass(frozen=True)
class TransformerConfig:
    """A PixArt-α/δ/Σ transformer: defaults are PixArt-XL-2 at 512 px."""

    depth: int = 28
    hidden_size: int = 1152
    num_heads: int = 16
    patch_size: int = 2
    in_channels: int = 4
    out_channels: int = 8
    mlp_hidden: int = 4608
    caption_channels: int = 4096
    caption_length: int = ALPHA_TOKENS
    micro_conditions: bool = False
    null_caption: bool = True
    sample_size: int = 64
    interpolation_scale: float = 1.0

    def __post_init__(self) -> None:
        owner = "transformer config"
        for name, high in (
            ("depth", MAX_DEPTH),
            ("hidden_size", MAX_WIDTH),
            ("num_heads", MAX_HEADS),
            ("patch_size", 64),
            ("in_channels", MAX_WIDTH),
            ("out_channels", MAX_WIDTH),
            ("mlp_hidden", MAX_FEED_FORWARD),
            ("caption_channels", MAX_WIDTH),
            ("caption_length", MAX_CAPTION_TOKENS),
            ("sample_size", MAX_SAMPLE_SIZE),
        ):
            check_int(owner, name, getattr(self, name), 1, high)
        check_bool(owner, "micro_conditions", self.micro_conditions)
        check_bool(owner, "null_caption", self.null_caption)
        check_float(owner, "interpolation_scale", self.interpolation_scale, MAX_SAMPLE_SIZE)
        if self.hidden_size % self.num_heads:
            raise CheckpointError(f"hidden size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.micro_conditions and self.hidden_size % 3:
            raise CheckpointError(f"micro-conditions need a hidden size divisible by 3, found {self.hidden_size}")
        if self.sample_size % self.patch_size:
            raise CheckpointError(f"sample size {self.sample_size} must be a multiple of patch size {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def base_size(self) -> int:
        """Patch-grid side at the training resolution: positions are scaled against it."""
        return self.sample_size // self.patch_size

    @property
    def resolution(self) -> int:
        """Training resolution in pixels (latents are 1/8 of the image)."""
        return self.sample_size * vae_defaults_for(self).downscale

    @property
    def family(self) -> str:
        return "PixArt-Σ" if self.caption_length == SIGMA_TOKENS else "PixArt-α/δ"

    def describe(self) -> str:
        micro = "with micro-conditions" if self.micro_conditions else "no micro-conditions"
        return (
            f"{self.family} {self.resolution} px, depth {self.depth}, width {self.hidden_size}, "
            f"{self.num_heads} heads, {self.caption_length} caption tokens of {self.caption_channels}, "
            f"{micro}, position interpolation {self.interpolation_scale:g}"
        )


class TransformerLayout(Enum):
    """How a checkpoint names its tensors."""

    REFERENCE = "reference"
    DIFFUSERS = "diffusers"
    CONTROLNET_FULL = "reference ControlNet-Transformer (its base part)"


_REFERENCE_ANCHOR = "x_embedder.proj.weight"
_DIFFUSERS_ANCHOR = "adaln_single.linear.weight"


def detect_transformer(
    source: TensorSource, hints: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None
) -> DetectedCheckpoint[TransformerConfig]:
    """Recognise a PixArt transformer in ``source``; ``config`` is what its diffusers folder says (config.json
    fields and ``_pipeline_class``), ``hints`` what the caller gives for what the checkpoint does not say, in
    diffusers' config names (``GIVEN_AS``; the rule: ``checkpoints/hints.py``).

    Raises CheckpointError when ``source`` holds no transformer or several, what it holds is not PixArt, a
    hint contradicts it, or a hint's name is not in ``HINT_NAMES``.
    """
    hints, config = dict(hints or {}), dict(config or {})
    check_names(source.origin, hints, HINT_NAMES, "a PixArt transformer")
    refuse_other_family(source, "a PixArt transformer")
    prefix, anchor = find_prefix(
        source,
        (_REFERENCE_ANCHOR, _DIFFUSERS_ANCHOR),
        "a PixArt transformer",
        "transformers",
        f"PixArt keys such as {_REFERENCE_ANCHOR}",
    )
    view = under_prefix(source, prefix)
    if anchor == _DIFFUSERS_ANCHOR:
        layout = TransformerLayout.DIFFUSERS
        view = RenamedSource(view, DIFFUSERS_TABLE)
    elif prefix == "base_model." and any(k.startswith("controlnet.") for k in source.shapes):
        layout = TransformerLayout.CONTROLNET_FULL
    else:
        layout = TransformerLayout.REFERENCE
    return DetectedCheckpoint(_config_from(view, hints, config), layout, prefix, view)


def _config_from(source: TensorSource, hints: dict[str, Any], config: dict[str, Any]) -> TransformerConfig:
    hidden, in_channels, patch, patch_w = shape_of(source, "x_embedder.proj.weight", 4)
    if patch != patch_w:
        raise CheckpointError(f"{source.origin}: non-square patches {patch}x{patch_w} are not PixArt")
    out_features = shape_of(source, "final_layer.linear.weight", 2)[0]
    if out_features % (patch * patch):
        raise CheckpointError(f"{source.origin}: final layer width {out_features} is not a multiple of {patch}x{patch}")
    caption_channels = shape_of(source, "y_embedder.y_proj.fc1.weight", 2)[1]
    micro = "csize_embedder.mlp.0.weight" in source.shapes
    if micro != ("ar_embedder.mlp.0.weight" in source.shapes):
        raise CheckpointError(f"{source.origin}: has only one of the two micro-condition embedders (csize, ar)")
    null_caption = "y_embedder.y_embedding" in source.shapes
    tokens = _caption_length(source, hints, config, micro)
    sample_size = _sample_size(source, hints, config, micro, patch)
    return TransformerConfig(
        depth=count_numbered(source, "blocks.", "transformer blocks"),
        hidden_size=hidden,
        num_heads=num_heads_from(source, hints, config, hidden),
        patch_size=patch,
        in_channels=in_channels,
        out_channels=out_features // (patch * patch),
        mlp_hidden=shape_of(source, "blocks.0.mlp.fc1.weight", 2)[0],
        caption_channels=caption_channels,
        caption_length=tokens,
        micro_conditions=micro,
        null_caption=null_caption,
        sample_size=sample_size,
        interpolation_scale=_interpolation(source, hints, config, sample_size, tokens),
    )


def default_interpolation(sample_size: int, tokens: int) -> float:
    """Position interpolation: α 1 at 256/512 and 2 at 1024; Σ 0.5 at 256 up to 4 at 2K."""
    if tokens == SIGMA_TOKENS:
        return sample_size / 64
    return float(max(sample_size // 64, 1))


def _interpolation(
    source: TensorSource, hints: dict[str, Any], config: dict[str, Any], sample_size: int, tokens: int
) -> float:
    """The folder's or the hint's interpolation scale (checked by TransformerConfig), else the default."""
    scale = _settle(source, "interpolation_scale", config.get("interpolation_scale"), "its config.json", hints)
    return default_interpolation(sample_size, tokens) if scale is None else scale


def _settle(source: TensorSource, name: str, said: Any, where: str, hints: Mapping[str, Any], *aliases: str) -> Any:
    """``settle`` for the transformer's hint ``name`` (also given as ``aliases``)."""
    hint = first_given(hints, name, *aliases)
    if name != "sample_size":
        return settle(source.origin, name, said, where, hint, GIVEN_AS[name])
    return settle(source.origin, name, said, where, hint, GIVEN_AS[name], _pixels, _both_units)


def _pixels(size: Any) -> str:
    """A sample size with the training resolution it means, as --training-resolution gives it."""
    pixels = f" ({size * SD_VAE.downscale} px)" if isinstance(size, int) else ""
    return f"{size!r}{pixels}"


def _both_units(size: int) -> str:
    """A sample size to give, in both units the surfaces take: pixels (--training-resolution, the loader's
    training_resolution) and latent pixels (--sample-size, ``hints={'sample_size': ...}``)."""
    return f"{size * SD_VAE.downscale} as a training resolution in px, or {size} as a sample size"


def _caption_length(source: TensorSource, hints: dict[str, Any], config: dict[str, Any], micro: bool) -> int:
    said, where = config.get("caption_length"), "its config.json"
    if "y_embedder.y_embedding" in source.shapes:
        said, where = shape_of(source, "y_embedder.y_embedding", 2)[0], "its y_embedding (a row per caption token)"
    tokens = _settle(source, "caption_length", said, where, hints)
    if tokens is not None:
        return tokens  # checked by TransformerConfig
    pipeline = config.get("_pipeline_class") or ""
    if not isinstance(pipeline, str):
        raise CheckpointError(f"{source.origin}: the pipeline's _class_name must be text, found {pipeline!r}")
    if "Sigma" in pipeline:
        return SIGMA_TOKENS
    if "Alpha" in pipeline or micro:
        return ALPHA_TOKENS  # micro-conditions exist only in PixArt-α/δ 1024-MS
    raise CheckpointError(
        f"{source.origin}: a diffusers-layout transformer without micro-conditions may be PixArt-α "
        f"(120 caption tokens) or PixArt-Σ (300), and nothing in the file says which: load its "
        f"diffusers folder (with model_index.json) or give the caption length ({GIVEN_AS['caption_length']})"
    )


def _sample_size(source: TensorSource, hints: dict[str, Any], config: dict[str, Any], micro: bool, patch: int) -> int:
    said, where = config.get("sample_size"), "its config.json"
    if "pos_embed" in source.shapes:
        tokens = shape_of(source, "pos_embed", 3)[1]
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise CheckpointError(f"{source.origin}: pos_embed has {tokens} positions, not a square grid")
        said, where = side * patch, "its pos_embed"
    if said is not None:  # a config.json's value is checked before a hint is compared with it
        check_int("transformer config", "sample_size", said, 1, MAX_SAMPLE_SIZE)
    size = _settle(source, "sample_size", said, where, hints)
    if size is not None:
        check_int("transformer config", "sample_size", size, 1, MAX_SAMPLE_SIZE)  # used at once
        return size
    if micro:
        return 128  # micro-conditions exist only in the 1024-MS models
    raise CheckpointError(
        f"{source.origin}: the training resolution is not in the weights (no pos_embed, no "
        f"micro-conditions): load its diffusers folder (with config.json) or give the training resolution "
        f"({GIVEN_AS['sample_size']})"
    )


def num_heads_from(
    source: TensorSource,
    hints: Mapping[str, Any],
    config: Mapping[str, Any],
    hidden: int,
    fallback: int | None = None,
) -> int:
    """Heads from the folder's config.json or the file's metadata, else a hint, PixArt's 72-wide heads,
    ``fallback``, else refuse; a hint that contradicts the file is refused."""
    said, where = first_given(config, "num_attention_heads", "num_heads"), "its config.json"
    if said is None and "num_heads" in source.metadata:
        said, where = int_text(source.origin, "num_heads", source.metadata["num_heads"]), "its metadata"
    heads = _settle(source, "num_heads", said, where, hints, "num_attention_heads")
    if heads is not None:
        return heads  # checked by the config it goes into
    if hidden % HEAD_DIM == 0:
        return hidden // HEAD_DIM
    if fallback is not None:
        return fallback
    raise CheckpointError(
        f"{source.origin}: width {hidden} is not a multiple of PixArt's head size {HEAD_DIM}, so the "
        f"number of heads cannot be read from the weights: give it ({GIVEN_AS['num_heads']})"
    )


DIFFUSERS_TRANSFORMER: tuple[Rule, ...] = (
    Rule(("pos_embed.proj",), "x_embedder.proj"),
    Rule(("caption_projection.linear_1",), "y_embedder.y_proj.fc1"),
    Rule(("caption_projection.linear_2",), "y_embedder.y_proj.fc2"),
    Rule(("adaln_single.emb.timestep_embedder.linear_1",), "t_embedder.mlp.0"),
    Rule(("adaln_single.emb.timestep_embedder.linear_2",), "t_embedder.mlp.2"),
    Rule(("adaln_single.emb.resolution_embedder.linear_1",), "csize_embedder.mlp.0"),
    Rule(("adaln_single.emb.resolution_embedder.linear_2",), "csize_embedder.mlp.2"),
    Rule(("adaln_single.emb.aspect_ratio_embedder.linear_1",), "ar_embedder.mlp.0"),
    Rule(("adaln_single.emb.aspect_ratio_embedder.linear_2",), "ar_embedder.mlp.2"),
    Rule(("adaln_single.linear",), "t_block.1"),
    Rule(("proj_out",), "final_layer.linear"),
    Rule(("scale_shift_table",), "final_layer.scale_shift_table"),
    *prefixed(BLOCK_RULES, "transformer_blocks.{i}.", "blocks.{i}."),
)


DIFFUSERS_TABLE = KeyTable(DIFFUSERS_TRANSFORMER)


# Reference tensors diffusers has no place for; ``to_diffusers`` keeps them under their own names.
REFERENCE_ONLY = ("pos_embed", "y_embedder.y_embedding")


def to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reference-layout transformer state dict in diffusers names, losing nothing.

    ``REFERENCE_ONLY`` keys pass through unchanged, so the way back restores the original exactly;
    drop them before handing the result to diffusers itself.
    """
    return DIFFUSERS_TABLE.to_theirs(state_dict)


def vae_defaults_for(config: TransformerConfig) -> VaeConfig:
    """The VAE a transformer was trained with: SDXL's for PixArt-Σ (300 caption tokens), else SD 1.x's."""
    return SDXL_VAE if config.caption_length == SIGMA_TOKENS else SD_VAE


def sample_size_for(pixels: int) -> int:
    """A training resolution in pixels as the transformer's ``sample_size`` in latents (PixArt-α, δ and Σ all
    work at 1/8: the SD and SDXL VAEs have the same downscale)."""
    return pixels // SD_VAE.downscale
