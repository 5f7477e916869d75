"""LoRA files made for other model families, or holding adapter variants this pack does not apply, told from
their keys and sizes so that ``read_lora`` can refuse them by name (``models/lora_config.py``).

Most families show in their module names (Flux's ``double_blocks``, a UNet's ``down_blocks``...). Some use
PixArt's own diffusers names (``transformer_blocks.N.attn1.to_q``, ``ff.net.0.proj``): only their sizes tell
them apart, and an attention-only Sana-600M LoRA, as wide as PixArt-XL, cannot be told apart at all.
"""

from __future__ import annotations

from ..checkpoints.files import TensorSource
from ..errors import CheckpointError

# Adapter tensors of variants this pack does not apply: a dotted part of the key -> what they are.
_UNSUPPORTED = {
    "dora_scale": "DoRA (weight-decomposed LoRA)",
    "lora_magnitude_vector": "DoRA (weight-decomposed LoRA)",
    "hada_t1": "LoHa with Tucker factors (convolutions)",
    "lokr_t2": "LoKr with Tucker factors (convolutions)",
    "lora_mid": "LoCon with Tucker factors (convolutions)",
    "diff": "a full weight difference",
    "diff_b": "a full bias difference",
}
# Key fragments of LoRAs for other model families, checked in order: fragment -> the family.
_OTHER_FAMILIES = (
    ("double_blocks", "Flux"),
    ("single_blocks", "Flux"),
    ("single_transformer_blocks", "Flux"),
    ("joint_blocks", "SD3"),
    ("context_block", "SD3"),
    ("add_q_proj", "Flux or SD3 (joint attention)"),
    ("conv_inverted", "Sana"),
    ("conv_depth", "Sana"),
    ("conv_point", "Sana"),
    ("down_blocks_0_attentions", "SD 1.x/2.x"),
    ("down_blocks.0.attentions", "SD 1.x/2.x"),
    ("input_blocks_1_1", "SD 1.x/2.x"),
    ("input_blocks.1.1", "SD 1.x/2.x"),
    ("lora_te2_", "SDXL"),
    ("text_encoder_2", "SDXL"),
    ("input_blocks", "SDXL"),
    ("down_blocks", "SDXL"),
    ("mid_block", "SD 1.x/2.x or SDXL (a UNet)"),
    ("up_blocks", "SD 1.x/2.x or SDXL (a UNet)"),
    ("middle_block", "SD 1.x/2.x or SDXL (a UNet)"),
    ("output_blocks", "SD 1.x/2.x or SDXL (a UNet)"),
    ("lora_te_", "a CLIP text encoder (SD 1.x)"),
    ("text_encoder.", "a CLIP text encoder"),
)

# T5's own module names: a file that holds them also trained the T5 text encoder.
_T5_FRAGMENTS = ("SelfAttention", "EncDecAttention", "DenseReluDense")
# Widths of other families whose module names are PixArt's (diffusers' attention and feed-forward names):
# only the sizes tell them apart. Sana-600M is as wide as PixArt-XL: only its caption projection (Gemma-2's
# 2304-wide features) shows it, and an attention-only Sana-600M LoRA cannot be told from a PixArt one.
_CAPTION_PROJECTION = ("caption_projection", "y_embedder", "y_proj")
_SANA_CAPTION_WIDTH = 2304
_SANA_1600M_WIDTH = 2240
_FLUX_WIDTHS = (3072, 12288)  # Flux's width and its feed-forward's


def refuse_other_families(source: TensorSource) -> None:
    """Raise ``CheckpointError`` naming the family of a LoRA made for another model, or an unsupported variant."""
    keys = list(source.shapes)
    t5 = next((k for k in keys if any(f in k for f in _T5_FRAGMENTS)), None)
    if t5 is not None:
        raise CheckpointError(
            f"{source.origin}: this LoRA includes T5 text encoder weights (e.g. {t5!r}); the pack applies LoRAs "
            f"to the PixArt transformer only and refuses a file it would apply in part"
        )
    family_by_size = _family_by_size(source)
    if family_by_size is not None:
        raise CheckpointError(
            f"{source.origin}: this is a LoRA for {family_by_size}, not for PixArt: it cannot apply to a PixArt "
            f"transformer"
        )
    for fragment, family in _OTHER_FAMILIES:
        hit = next((k for k in keys if fragment in k), None)
        if hit is not None:
            raise CheckpointError(
                f"{source.origin}: this is a LoRA for {family} (e.g. {hit!r}), not for PixArt: it cannot apply "
                f"to a PixArt transformer"
            )
    for fragment, what in _UNSUPPORTED.items():
        hit = next((k for k in keys if fragment in k.split(".")), None)
        if hit is not None:
            raise CheckpointError(
                f"{source.origin}: holds {what} (e.g. {hit!r}), which this pack does not apply; it applies "
                f"LoRA, LoHa and LoKr adapters of linear layers"
            )


def _family_by_size(source: TensorSource) -> str | None:
    """Another family whose LoRA keys are PixArt's own names, told by its tensors' sizes, or None."""
    sizes = {key: set(shape) for key, shape in source.shapes.items()}
    for key, dims in sizes.items():
        if any(f in key for f in _CAPTION_PROJECTION) and _SANA_CAPTION_WIDTH in dims:
            return f"Sana (e.g. {key!r} takes Gemma-2's {_SANA_CAPTION_WIDTH}-wide captions)"
        if _SANA_1600M_WIDTH in dims:
            return f"Sana-1600M (e.g. {key!r} is {_SANA_1600M_WIDTH} wide)"
    every = set().union(*sizes.values()) if sizes else set()
    if all(width in every for width in _FLUX_WIDTHS):
        return f"Flux (its tensors are {_FLUX_WIDTHS[0]} wide, with a {_FLUX_WIDTHS[1]}-wide feed-forward)"
    return None
