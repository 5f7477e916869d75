"""Detection helpers shared by every model: reading shapes, counting numbered blocks, naming look-alikes."""

from __future__ import annotations

import re

from ..errors import CheckpointError
from .files import TensorSource


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


# (key fragment, what it is): checked in order by ``identify``.
_LOOKALIKES = (
    ("controlnet_blocks.", "a PixArt ControlNet adapter without its base model (load it with the ControlNet loader)"),
    ("copied_block.", "a PixArt ControlNet without its base model (load it with the ControlNet loader)"),
    ("x_embedder.proj.weight", "a PixArt transformer (load it with the transformer loader)"),
    ("adaln_single.linear.weight", "a PixArt transformer (load it with the transformer loader)"),
    ("encoder.block.0.layer.0.SelfAttention", "a T5 text encoder (load it with the T5 loader)"),
    ("text_model.encoder.layers.", "a CLIP text encoder"),
    ("label_emb.", "an SDXL UNet"),
    ("time_embedding.linear_1.", "a diffusers UNet"),
    ("input_blocks.0.0.weight", "a Stable Diffusion UNet (SD 1.x/2.x)"),
    ("decoder.up.0.block.0.conv1.weight", "a VAE (load it with the VAE loader)"),
    ("post_quant_conv.weight", "a VAE (load it with the VAE loader)"),
    ("down_blocks.0.resnets.0.conv1.weight", "a diffusers UNet"),
    ("double_blocks.0.", "a Flux transformer"),
    ("joint_blocks.0.", "an SD3 transformer"),
    ("lora_", "a LoRA"),
    ("shared.weight", "a T5 text encoder (load it with the T5 loader)"),
)


def identify(source: TensorSource, expected: str = "PixArt keys such as x_embedder.proj.weight") -> str:
    """A short phrase saying what a state dict looks like, for error messages; ``expected`` names what was wanted."""
    if not source.shapes:
        return "the file holds no tensors (an empty state dict)"
    for fragment, what in _LOOKALIKES:
        if any(fragment in k for k in source.shapes):
            return f"it looks like {what}"
    sample = ", ".join(sorted(source.shapes)[:3])
    return f"unknown model ({len(source)} tensors, e.g. {sample}); expected {expected}"
