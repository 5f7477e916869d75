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

# (key fragment, what it is): checked in order by ``identify``, after ``_FAMILIES``.
_LOOKALIKES = (
    ("controlnet_blocks.", "a PixArt ControlNet adapter without its base model (give it as the ControlNet)"),
    ("copied_block.", "a PixArt ControlNet without its base model (give it as the ControlNet)"),
    ("double_blocks.0.", "a Flux transformer"),
    ("joint_blocks.0.", "an SD3 transformer"),
    ("x_embedder.proj.weight", "a PixArt transformer (give it as the transformer)"),
    ("adaln_single.linear.weight", "a PixArt transformer (give it as the transformer)"),
    ("encoder.block.0.layer.0.SelfAttention", "a T5 text encoder (give it as the T5 encoder)"),
    ("text_model.encoder.layers.", "a CLIP text encoder"),
    ("label_emb.", "an SDXL UNet"),
    ("time_embedding.linear_1.", "a diffusers UNet"),
    ("input_blocks.0.0.weight", "a Stable Diffusion UNet (SD 1.x/2.x)"),
    ("decoder.up.0.block.0.conv1.weight", "a VAE (give it as the VAE)"),
    ("post_quant_conv.weight", "a VAE (give it as the VAE)"),
    ("down_blocks.0.resnets.0.conv1.weight", "a diffusers UNet"),
    ("lora_", "a LoRA"),
    ("shared.weight", "a T5 text encoder (give it as the T5 encoder)"),
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


def identify(source: TensorSource, expected: str = "PixArt keys such as x_embedder.proj.weight") -> str:
    """A short phrase saying what a state dict looks like, for error messages; ``expected`` names what was wanted."""
    if not source.shapes:
        return "the file holds no tensors (an empty state dict)"
    family = other_family(source)
    if family is not None:
        return f"it looks like {family}"
    for fragment, what in _LOOKALIKES:
        if any(fragment in k for k in source.shapes):
            return f"it looks like {what}"
    sample = ", ".join(sorted(source.shapes)[:3])
    return f"unknown model ({len(source)} tensors, e.g. {sample}); expected {expected}"
