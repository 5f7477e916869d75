"""The VAE's configuration and key layouts, detected from a checkpoint's keys and shapes (docs/REFERENCE.md §1).

PixArt-α/δ decode with the SD 1.x VAE and PixArt-Σ with the SDXL VAE: one architecture (diffusers'
``AutoencoderKL``), two latent scalings. Users hold it as an LDM single file (ComfyUI ``models/vae``,
or inside a whole SD checkpoint under ``first_stage_model.``) or in diffusers layout. The engine's
modules are diffusers' names; LDM files go through ``ldm_table``. Nothing is ever downloaded: the
configs are the constants below, completed from the weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, ClassVar

from ..checkpoints.config_values import MAX_WIDTH, check_bool, check_float, check_int
from ..checkpoints.detection import DetectedCheckpoint, count_numbered, find_prefix, shape_of, under_prefix
from ..checkpoints.layouts import KeyTable, RenamedSource, Rule, prefixed
from ..checkpoints.sources import TensorSource
from ..errors import CheckpointError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VaeConfig:
    """An SD-style KL autoencoder: defaults are the SD 1.x VAE (``sd-vae-ft-ema``/``-mse``)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    force_upcast: bool = False  # fp16 weights overflow: keep them in fp32 when fp16 is asked

    # Read from the weights' shapes, never from config.json or hints: a hint may only repeat them.
    from_shapes: ClassVar[tuple[str, ...]] = (
        "block_out_channels",
        "layers_per_block",
        "in_channels",
        "out_channels",
        "latent_channels",
    )
    # What the weights cannot tell: from config.json, a hint, else the defaults.
    from_config: ClassVar[tuple[str, ...]] = ("norm_num_groups", "scaling_factor", "force_upcast")
    hint_names: ClassVar[tuple[str, ...]] = from_shapes + from_config  # any other hint's name is refused

    def __post_init__(self) -> None:
        owner = "VAE config"
        channels = self.block_out_channels
        if not isinstance(channels, tuple) or not 1 <= len(channels) <= 8:
            raise CheckpointError(f"{owner}: block_out_channels must be 1 to 8 channel counts, found {channels!r}")
        for value in channels:
            check_int(owner, "block_out_channels", value, 1, MAX_WIDTH)
        check_int(owner, "layers_per_block", self.layers_per_block, 1, 64)
        for name in ("in_channels", "out_channels", "latent_channels", "norm_num_groups"):
            check_int(owner, name, getattr(self, name), 1, MAX_WIDTH)
        check_float(owner, "scaling_factor", self.scaling_factor, 1000.0)
        check_bool(owner, "force_upcast", self.force_upcast)
        odd = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if odd:
            raise CheckpointError(
                f"block channels {list(self.block_out_channels)} must be multiples of the {self.norm_num_groups} "
                f"group-norm groups, found {odd}; give the right norm_num_groups (a diffusers config.json field)"
            )

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel along each side (8 for SD and SDXL)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Arguments for ``diffusers.AutoencoderKL``."""
        blocks = len(self.block_out_channels)
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": ("DownEncoderBlock2D",) * blocks,
            "up_block_types": ("UpDecoderBlock2D",) * blocks,
            "block_out_channels": self.block_out_channels,
            "layers_per_block": self.layers_per_block,
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
            "scaling_factor": self.scaling_factor,
            "force_upcast": self.force_upcast,
        }

    def describe(self) -> str:
        channels = "-".join(str(c) for c in self.block_out_channels)
        upcast = ", kept in fp32 when fp16 is asked" if self.force_upcast else ""
        return (
            f"{self.latent_channels} latent channels at 1/{self.downscale}, block channels {channels}, "
            f"{self.layers_per_block} layers per block, {self.norm_num_groups} norm groups, "
            f"scaling factor {self.scaling_factor:g}{upcast}"
        )


SD_VAE = VaeConfig()
SDXL_VAE = replace(SD_VAE, scaling_factor=0.13025, force_upcast=True)  # the SDXL VAE overflows in fp16


# --- key layouts ---------------------------------------------------------------------------------

_MID_RULES: tuple[Rule, ...] = (
    Rule(("mid.block_1",), "mid_block.resnets.0"),
    Rule(("mid.block_2",), "mid_block.resnets.1"),
    Rule(("mid.attn_1.norm",), "mid_block.attentions.0.group_norm"),
    Rule(("mid.attn_1.q",), "mid_block.attentions.0.to_q", squeeze=True),
    Rule(("mid.attn_1.k",), "mid_block.attentions.0.to_k", squeeze=True),
    Rule(("mid.attn_1.v",), "mid_block.attentions.0.to_v", squeeze=True),
    Rule(("mid.attn_1.proj_out",), "mid_block.attentions.0.to_out.0", squeeze=True),
    Rule(("norm_out",), "conv_norm_out"),
)


def _resnet(theirs: str, ours: str) -> tuple[Rule, ...]:
    """One resnet: the same names inside, except LDM's ``nin_shortcut`` (matched first: the first match wins)."""
    return Rule((f"{theirs}.nin_shortcut",), f"{ours}.conv_shortcut"), Rule((theirs,), ours)


def ldm_table(num_blocks: int) -> KeyTable:
    """LDM names -> diffusers names for a VAE of ``num_blocks`` resolution levels.

    LDM numbers the decoder's levels from the highest resolution (``up.0``), diffusers from the
    lowest (``up_blocks.0``): level ``i`` of diffusers is ``up.{num_blocks - 1 - i}``.
    """
    rules = [
        *prefixed(_MID_RULES, "encoder.", "encoder."),
        *prefixed(_MID_RULES, "decoder.", "decoder."),
        *_resnet("encoder.down.{i}.block.{j}", "encoder.down_blocks.{i}.resnets.{j}"),
        Rule(("encoder.down.{i}.downsample.conv",), "encoder.down_blocks.{i}.downsamplers.0.conv"),
    ]
    for i in range(num_blocks):
        level = num_blocks - 1 - i
        rules += _resnet(f"decoder.up.{level}.block.{{j}}", f"decoder.up_blocks.{i}.resnets.{{j}}")
        rules.append(Rule((f"decoder.up.{level}.upsample.conv",), f"decoder.up_blocks.{i}.upsamplers.0.conv"))
    return KeyTable(rules)


# diffusers files written before its attention rewrite name the projections query/key/value/proj_attn.
LEGACY_DIFFUSERS_TABLE = KeyTable(
    [
        Rule((f"{side}.mid_block.attentions.0.{old}",), f"{side}.mid_block.attentions.0.{new}")
        for side in ("encoder", "decoder")
        for old, new in (("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("proj_attn", "to_out.0"))
    ]
)


# --- detection ------------------------------------------------------------------------------------


class VaeLayout(Enum):
    """How a VAE checkpoint names its tensors."""

    LDM = "LDM (original Stable Diffusion)"
    DIFFUSERS = "diffusers"


_ANCHOR = "encoder.conv_in.weight"
SCALING_FROM_CONFIG = "scaling factor from its config"  # ``DetectedCheckpoint.note`` when config.json gave it
_LEFTOVERS = ("loss.", "model_ema.")  # LDM training checkpoints keep the discriminator and EMA state


def detect_vae(
    source: TensorSource, hints: Mapping[str, Any] | None = None, defaults: VaeConfig = SD_VAE
) -> DetectedCheckpoint[VaeConfig]:
    """Recognise an SD/SDXL VAE in ``source``; ``hints`` are diffusers config fields, ``defaults`` the rest.

    The VAE may sit at the top (a VAE file) or under a prefix (``first_stage_model.`` in a whole SD
    checkpoint). Raises CheckpointError when ``source`` holds no VAE or several, or not an SD-style one.
    """
    prefix, _ = find_prefix(source, (_ANCHOR,), "a VAE", "VAEs", f"VAE keys such as {_ANCHOR}")
    view = under_prefix(source, prefix)
    ignored = tuple(k for k in view.shapes if k.startswith(_LEFTOVERS))
    if ignored:
        log.info("%s: ignoring %d training tensors (%s...)", source.origin, len(ignored), ignored[0])
    if any(k.startswith("encoder.down.") for k in view.shapes):
        layout = VaeLayout.LDM
        tensors = RenamedSource(view, ldm_table(count_numbered(view, "encoder.down.", "encoder levels")))
    elif any(k.startswith("encoder.down_blocks.") for k in view.shapes):
        layout = VaeLayout.DIFFUSERS
        tensors = RenamedSource(view, LEGACY_DIFFUSERS_TABLE)
    else:
        raise CheckpointError(
            f"{source.origin}: has {_ANCHOR} but no encoder levels (encoder.down.N or encoder.down_blocks.N): "
            f"not an SD-style VAE"
        )
    known = {k: v for k, v in (hints or {}).items() if k in VaeConfig.from_config and v is not None}
    config = _config_from(tensors, defaults, known)
    return DetectedCheckpoint(config, layout, prefix, tensors, ignored, _scaling_note(known))


def _scaling_note(known: Mapping[str, Any]) -> str:
    """Where the scaling factor came from: the weights never hold it."""
    if "scaling_factor" in known:
        return SCALING_FROM_CONFIG
    return "scaling factor not in the file: 0.18215 for PixArt-α/δ, 0.13025 for Σ"


def _config_from(source: TensorSource, base: VaeConfig, known: Mapping[str, Any]) -> VaeConfig:
    """The architecture read from the shapes (diffusers names); the rest from ``known``, then ``base``."""
    blocks = count_numbered(source, "encoder.down_blocks.", "encoder levels")
    channels = tuple(
        shape_of(source, f"encoder.down_blocks.{i}.resnets.0.conv1.weight", 4, "a VAE")[0] for i in range(blocks)
    )
    latent_channels = shape_of(source, "decoder.conv_in.weight", 4, "a VAE")[1]
    if latent_channels != 4:
        raise CheckpointError(
            f"{source.origin}: a VAE with {latent_channels} latent channels; PixArt works in the 4-channel "
            f"latents of the SD 1.x and SDXL VAEs (16 channels is an SD3 or Flux VAE)"
        )
    return replace(
        base,
        block_out_channels=channels,
        layers_per_block=count_numbered(source, "encoder.down_blocks.0.resnets.", "first-level resnets"),
        in_channels=shape_of(source, "encoder.conv_in.weight", 4, "a VAE")[1],
        out_channels=shape_of(source, "decoder.conv_out.weight", 4, "a VAE")[0],
        latent_channels=latent_channels,
        **known,
    )
