"""TAESD's configuration and the layouts users hold it in, detected from a checkpoint's keys and shapes.

TAESD (diffusers' ``AutoencoderTiny`` with its default arguments) encodes and decodes the same 4-channel latents
as the SD 1.x VAE (TAESD, for PixArt-α/δ) or the SDXL VAE (TAESDXL, for Σ), in a fraction of their time and
memory. Users hold it as ComfyUI's single file (``taesd_layout``), as the separate ``taesd_encoder`` and
``taesd_decoder`` files of ComfyUI's ``models/vae_approx`` (a decoder alone decodes), or as a diffusers
``AutoencoderTiny`` folder.

Latent convention (ComfyUI's ``comfy/taesd/taesd.py``): raw latent = encoder(image in [0, 1]) / vae_scale +
vae_shift; image = decoder((raw latent - vae_shift) x vae_scale). A file without the two scalars gets
vae_scale = the family's scaling factor and vae_shift 0, which is what ComfyUI's VAE Loader gives taesd
(0.18215) and taesdxl (0.13025). The engine's scaled latents stay raw latents x the family's scaling factor.
A file's own vae_scale is its latent convention and stands (the pack's autoencoders measure theirs), except one
that is the other family's scaling factor: that file makes the other family's latents, and is refused.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..checkpoints.config_values import check_bool, check_float
from ..checkpoints.detection import DetectedCheckpoint, find_prefix, shape_of, under_prefix
from ..checkpoints.files import open_checkpoint
from ..checkpoints.layouts import RenamedSource
from ..checkpoints.loading import FLOATING_DTYPES
from ..checkpoints.sources import JoinedSource, TensorSource, printable_path, reading
from ..errors import CheckpointError
from .taesd_layout import COMFY_TABLE, DECODER, ENCODER, SCALE, SHIFT
from .vae_config import SD_VAE, SDXL_VAE, VaeConfig

log = logging.getLogger(__name__)

LATENT_CHANNELS = 4
WIDTH = 64  # channels of every TAESD layer

# diffusers config fields of AutoencoderTiny whose values are TAESD's (its defaults); others cannot run here.
_ARCHITECTURE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "encoder_block_out_channels": [WIDTH] * 4,
    "decoder_block_out_channels": [WIDTH] * 4,
    "num_encoder_blocks": [1, 3, 3, 3],
    "num_decoder_blocks": [3, 3, 3, 1],
    "act_fn": "relu",
    "upsample_fn": "nearest",
    "upsampling_scaling_factor": 2,
    "scaling_factor": 1.0,  # diffusers uses TAESD's encoder output as its scaled latents
    "shift_factor": 0.0,
}

# ComfyUI's VAE Loader gives taesd and taesdxl their family's scaling factor as vae_scale, and a file saved from it
# keeps that: a file's vae_scale equal to one of these says which family's latents it makes.
_FAMILIES = {  # name -> (scaling factor, its TAESD, the transformers that work in its latents)
    "SD_VAE": (SD_VAE.scaling_factor, "TAESD", "PixArt-α/δ"),
    "SDXL_VAE": (SDXL_VAE.scaling_factor, "TAESDXL", "PixArt-Σ"),
}
_FAMILY_TOLERANCE = 5e-3  # relative: bf16 rounds a vae_scale by up to 0.4%; the two factors differ by 40%
_LATENT_SCALE = ("scaling_factor", "shift_factor")  # diffusers' latent scale, not the family's scaling factor
_FAMILY = (
    "scaling_factor and shift_factor are diffusers' AutoencoderTiny's (1.0 and 0.0: it takes TAESD's output as "
    "scaled latents), not the family's: give the family's VAE as defaults= of load_vae or inspect_vae ("
    + ", ".join(f"{name}'s {factor:g} for {taesd}" for name, (factor, taesd, _) in _FAMILIES.items())
    + "; the pipeline takes the transformer's, vae_defaults_for); a file's own vae_scale and vae_shift are read "
    "from it"
)


@dataclass(frozen=True)
class TaesdConfig:
    """A TAESD autoencoder: its latent scale and shift, the family's scaling factor, whether it can encode."""

    vae_scale: float = SD_VAE.scaling_factor
    vae_shift: float = 0.0
    scaling_factor: float = SD_VAE.scaling_factor  # raw -> scaled latents, the family's (VaeConfig.scaling_factor)
    has_encoder: bool = True  # False: a decoder-only file, which decodes and cannot encode
    scale_in_file: bool = True  # False: the file has no vae_scale/vae_shift, the defaults above stand in

    # What the engine's ``Vae`` asks of any autoencoder config; TAESD's are fixed by its architecture.
    in_channels: ClassVar[int] = 3
    latent_channels: ClassVar[int] = LATENT_CHANNELS
    downscale: ClassVar[int] = 8
    force_upcast: ClassVar[bool] = False  # TAESD runs in fp16
    # Read from the shapes (its decoder's first layer), never from config.json or hints: a hint may only repeat it.
    from_shapes: ClassVar[tuple[str, ...]] = ("latent_channels",)
    hint_names: ClassVar[tuple[str, ...]] = (*_ARCHITECTURE, *from_shapes)  # any other hint's name is refused

    def __post_init__(self) -> None:
        owner = "TAESD config"
        check_float(owner, "vae_scale", self.vae_scale, 1000.0)
        check_float(owner, "scaling_factor", self.scaling_factor, 1000.0)
        shift = self.vae_shift
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not abs(shift) <= 1000.0:
            raise CheckpointError(f"{owner}: vae_shift must be a finite number in -1000..1000, found {shift!r:.80}")
        check_bool(owner, "has_encoder", self.has_encoder)

    def describe(self) -> str:
        only = "; decoder only: decodes, cannot encode" if not self.has_encoder else ""
        return (
            f"TAESD autoencoder, {self.latent_channels} latent channels at 1/{self.downscale}, "
            f"vae_scale {self.vae_scale:g}, vae_shift {self.vae_shift:g}, scaling factor {self.scaling_factor:g}{only}"
        )


class TaesdLayout(Enum):
    """How a TAESD checkpoint names its tensors."""

    COMFY = "ComfyUI single-file TAESD"
    SEPARATE = "TAESD encoder and decoder files"
    DIFFUSERS = "diffusers AutoencoderTiny"


_ANCHORS = (DECODER + "1.weight", "decoder.layers.0.weight")  # the decoder's first convolution, in each layout
_KL_ANCHORS = ("encoder.conv_in.weight", "decoder.conv_in.weight")
_BARE = re.compile(r"\d+\.")  # a separate file's keys: the layer number first
_EXTENSIONS = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt")
_SIDE = {ENCODER: "encoder", DECODER: "decoder"}


def is_taesd(source: TensorSource) -> bool:
    """Whether ``source`` holds TAESD tensors in any layout (checked before the KL VAE's detection)."""
    return _bare_side(source) is not None or any(
        ENCODER in k or DECODER in k or k.endswith(("encoder.layers.0.weight", "decoder.layers.0.weight"))
        for k in source.shapes
    )


def detect_taesd(
    source: TensorSource,
    hints: Mapping[str, Any] | None = None,
    defaults: VaeConfig = SD_VAE,
    hinted: Collection[str] = (),
) -> DetectedCheckpoint[TaesdConfig]:
    """Recognise TAESD in ``source``: ComfyUI's single file, one of the separate encoder/decoder files (its
    sibling is found beside it by name), or diffusers' ``AutoencoderTiny`` names; ``hints`` are diffusers
    config fields (config.json's, but the ``hinted`` ones a caller's hint gave), ``defaults`` the family's VAE
    (its scaling factor).

    Raises CheckpointError for a file that also holds an SD-style VAE, an encoder without a decoder, latent
    channels other than 4 (TAESD3 and TAEF1 have 16), a diffusers config of another architecture, or a
    ``vae_scale`` that is the scaling factor of the family ``defaults`` is not (``_check_family``).
    """
    joined = _join_separate_files(source)
    source = joined or source
    both = [k for k in source.shapes if k.endswith(_KL_ANCHORS)]
    if both:
        raise CheckpointError(
            f"{source.origin}: holds both an SD-style VAE ({both[0]}) and TAESD tensors; expected one autoencoder"
        )
    expected = f"TAESD keys such as {' or '.join(_ANCHORS)}"
    prefix, anchor = find_prefix(
        source, _ANCHORS, "a TAESD decoder", "TAESD decoders", expected, explain=_without_decoder
    )
    view = under_prefix(source, prefix)
    _check_config(source.origin, hints or {}, hinted)  # every layout: a hint may only repeat TAESD's architecture
    if anchor.startswith(DECODER):
        layout = TaesdLayout.SEPARATE if joined is not None else TaesdLayout.COMFY
        tensors: TensorSource = RenamedSource(view, COMFY_TABLE)
    else:
        layout, tensors = TaesdLayout.DIFFUSERS, view
    first = shape_of(tensors, "decoder.layers.0.weight", 4, "a TAESD decoder")
    if first[1] != LATENT_CHANNELS:
        raise CheckpointError(
            f"{source.origin}: a TAESD with {first[1]} latent channels (TAESD3 and TAEF1, for SD3 and Flux latents, "
            f"have 16); PixArt works in {LATENT_CHANNELS}-channel latents: TAESD for PixArt-α/δ, TAESDXL for Σ"
        )
    if first != (WIDTH, LATENT_CHANNELS, 3, 3):
        raise CheckpointError(
            f"{source.origin}: decoder.layers.0.weight has shape {list(first)}, expected TAESD's "
            f"{[WIDTH, LATENT_CHANNELS, 3, 3]}"
        )
    scale, shift = _scalar(tensors, SCALE), _scalar(tensors, SHIFT)
    if scale is not None:
        _check_family(source.origin, scale, defaults)
    missing = [name for name, value in ((SCALE, scale), (SHIFT, shift)) if value is None]
    note = (
        f"{' and '.join(missing)} not in the file: vae_scale is the family's scaling factor, vae_shift 0"
        if missing
        else "vae_scale and vae_shift from the file"
    )
    config = TaesdConfig(
        vae_scale=defaults.scaling_factor if scale is None else scale,
        vae_shift=0.0 if shift is None else shift,
        scaling_factor=defaults.scaling_factor,
        has_encoder=any(k.startswith("encoder.") for k in tensors.shapes),
        scale_in_file=not missing,
    )
    ignored = tuple(k for k in (SCALE, SHIFT) if k in tensors.shapes)  # read into the config, not weights
    return DetectedCheckpoint(config, layout, prefix, tensors, ignored, note)


def _scalar(tensors: TensorSource, key: str) -> float | None:
    """The value of a one-number tensor, or None when ``tensors`` lacks it."""
    if key not in tensors.shapes:
        return None
    shape, dtype = tensors.shapes[key], tensors.dtypes[key]
    if math.prod(shape) != 1 or dtype not in FLOATING_DTYPES:
        raise CheckpointError(
            f"{tensors.origin}: {key} must be one floating-point number, found shape {list(shape)} "
            f"{str(dtype).removeprefix('torch.')}"
        )
    value = torch.empty(shape, dtype=torch.float32)
    tensors.read_into(key, value)
    return float(value.reshape(()))


def _family_of(factor: float) -> str | None:
    """The name of the family (``_FAMILIES``) whose scaling factor ``factor`` is, or None when it is none's."""
    return next((n for n, (f, *_) in _FAMILIES.items() if math.isclose(factor, f, rel_tol=_FAMILY_TOLERANCE)), None)


def _check_family(origin: str, scale: float, defaults: VaeConfig) -> None:
    """Refuse a file whose ``vae_scale`` is one family's scaling factor when ``defaults`` is the other's: it makes
    that family's latents, not the ones the given family's transformer works in. A ``vae_scale`` of neither is the
    file's own latent convention (the pack's autoencoders measure theirs, ``training/autoencoder.py``) and stands
    under any family, as ComfyUI's TAESD applies it."""
    ours, given = _family_of(scale), _family_of(defaults.scaling_factor)
    if ours is None or given is None or ours == given:
        return
    _, taesd, models = _FAMILIES[ours]
    _, wanted, given_models = _FAMILIES[given]
    raise CheckpointError(
        f"{origin}: vae_scale {scale:g} in the file is the scaling factor of {ours} ({taesd}, for {models}), but the "
        f"family given has {defaults.scaling_factor:g} ({given}, for {given_models}): its latents are not that "
        f"family's; give defaults={ours} to load_vae or inspect_vae (the pipeline takes the transformer's, "
        f"vae_defaults_for; autoencoder training its autoencoder.scaling_factor), or use a {wanted} file"
    )


def _without_decoder(source: TensorSource) -> str | None:
    """Why a source with TAESD's encoder but no decoder cannot be used, or None for any other source."""
    if any(k.startswith(ENCODER) or "encoder.layers." in k for k in source.shapes):
        return (
            "it holds a TAESD encoder without its decoder (taesd_decoder.N.* or decoder.layers.N.*): the engine "
            "needs the decoder (taesd_decoder.safetensors beside taesd_encoder.safetensors)"
        )
    return None


def check_scale_hints(origin: str, hints: Mapping[str, Any]) -> None:
    """Refuse a ``scaling_factor`` or ``shift_factor`` hint other than diffusers' AutoencoderTiny's (1.0, 0.0), saying
    where the family's scaling factor is given; checked before config.json meets the hints, whatever the layout."""
    _check_config(origin, {k: hints[k] for k in _LATENT_SCALE if hints.get(k) is not None}, _LATENT_SCALE)


def _check_config(origin: str, fields: Mapping[str, Any], hinted: Collection[str]) -> None:
    """Refuse a diffusers config of another class or of an AutoencoderTiny that is not TAESD, saying where each
    value came from: config.json, or a caller's hint for the ``hinted`` fields (a hint in every layout)."""
    name = fields.get("_class_name")  # never a hint (not in TaesdConfig.hint_names)
    if name is not None and name != "AutoencoderTiny":
        raise CheckpointError(f"{origin}: config.json names {name!r}, but the weights are TAESD's (AutoencoderTiny)")
    odd = {
        k: fields[k]
        for k, want in _ARCHITECTURE.items()
        if k in fields and (list(fields[k]) if isinstance(fields[k], (list, tuple)) else fields[k]) != want
    }
    if odd:
        said = {k: v for k, v in odd.items() if k not in hinted}
        given = {k: v for k, v in odd.items() if k in hinted}
        where = [f"config.json has {said}"] if said else []
        if given:
            gives = "hints give" if len(given) > 1 else "hint gives"
            where.append(f"the {gives} {given} (hints= of load_vae or inspect_vae)")
        wanted = {k: _ARCHITECTURE[k] for k in odd}
        family = f"; {_FAMILY}" if any(k in odd for k in _LATENT_SCALE) else ""
        raise CheckpointError(
            f"{origin}: {' and '.join(where)}; the engine runs TAESD's architecture ({wanted}){family}"
        )


def _bare_side(source: TensorSource) -> str | None:
    """``ENCODER`` or ``DECODER`` when ``source`` is one of the separate TAESD files (keys ``0.weight``,
    ``1.conv.0.weight``...: the encoder starts at layer 0, the decoder at 1 after its clamp), else None."""
    if not source.shapes or not all(_BARE.match(k) for k in source.shapes):
        return None
    if source.shapes.get("0.weight") == (WIDTH, 3, 3, 3):  # the first convolution, from RGB
        return ENCODER
    first = source.shapes.get("1.weight", ())  # the first convolution, from the latent (of any channel count)
    return DECODER if "0.weight" not in source.shapes and first[:1] == (WIDTH,) and first[2:] == (3, 3) else None


def _join_separate_files(source: TensorSource) -> TensorSource | None:
    """A separate encoder or decoder file joined with its sibling under ComfyUI's prefixes, as ComfyUI's VAE Loader
    joins ``taesd_encoder.*`` and ``taesd_decoder.*``; a lone decoder alone. None for any other source."""
    side = _bare_side(source)
    if side is None:
        return None
    parts = {side: source}
    other_side = DECODER if side == ENCODER else ENCODER
    sibling = _sibling(source.path, side, other_side)
    if sibling is not None:
        other = open_checkpoint(sibling)
        if _bare_side(other) != other_side:
            raise CheckpointError(
                f"{other.origin}: beside {source.origin}, expected the TAESD {_SIDE[other_side]} (keys 0.weight or "
                f"1.weight, 1.conv.0.weight...), found other tensors ({len(other)} keys, e.g. {next(iter(other), '')})"
            )
        parts[other_side] = other
    elif side == DECODER:
        log.info("%s: a TAESD decoder without its encoder beside it: it decodes and cannot encode", source.origin)
    origin = " + ".join(parts[s].origin for s in (ENCODER, DECODER) if s in parts)
    return JoinedSource(parts, origin)


def _sibling(path: Path | None, side: str, other_side: str) -> Path | None:
    """The file beside ``path`` named like it with the other side (``taesdxl_decoder.pth`` ->
    ``taesdxl_encoder.*``, the same extension preferred), or None when ``path`` is not named so or none is there."""
    word, other_word = f"_{_SIDE[side]}.", f"_{_SIDE[other_side]}."
    if path is None or word not in path.name:
        return None
    head = path.name[: path.name.rindex(word)] + other_word
    with reading(path.parent):
        found = sorted(p for p in path.parent.iterdir() if p.name.startswith(head) and p.suffix in _EXTENSIONS)
    same = [p for p in found if p.suffix == path.suffix]
    if len(same) == 1 or len(found) == 1:
        return (same or found)[0]
    if found:
        names = [printable_path(p.name) for p in found]
        raise CheckpointError(f"{printable_path(path)}: ambiguous: several files beside it could be its pair: {names}")
    return None
