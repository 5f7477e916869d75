"""The TAESD key layouts: diffusers' ``AutoencoderTiny`` names and the single-file layout ComfyUI reads.

ComfyUI's VAE Loader recognises a file with ``taesd_encoder.N.*`` and ``taesd_decoder.N.*`` tensors and
the two scalars ``vae_scale`` and ``vae_shift`` (raw latent = encoder(image) / vae_scale + vae_shift).
Its decoder numbers its layers from 1 (layer 0 is the latent clamp, which has no weights), diffusers'
``decoder.layers`` from 0; the encoders number alike. The separate ``taesd_encoder``/``taesd_decoder`` files
users hold number their layers as ComfyUI's single file does, without the ``taesd_encoder.``/``taesd_decoder.``
prefix (ComfyUI adds it when it joins them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..checkpoints.layouts import KeyTable, Rule

if TYPE_CHECKING:
    from diffusers import AutoencoderTiny

TAESD_KWARGS = {"latent_channels": 4, "scaling_factor": 1.0}  # diffusers' defaults are TAESD's architecture

ENCODER = "taesd_encoder."  # ComfyUI's single-file prefixes
DECODER = "taesd_decoder."
SCALE, SHIFT = "vae_scale", "vae_shift"
DECODER_LAYERS = 19  # diffusers' decoder.layers 0..18 (ComfyUI's taesd_decoder 1..19); the encoder's 0..14 agree

# ComfyUI's single file -> diffusers' names; encoder indices are the same, decoder indices one lower.
COMFY_TABLE = KeyTable(
    [
        Rule((ENCODER + "{i}",), "encoder.layers.{i}"),
        *(Rule((f"{DECODER}{i + 1}",), f"decoder.layers.{i}") for i in range(DECODER_LAYERS)),
    ]
)


def comfy_taesd_state_dict(model: AutoencoderTiny, vae_scale: float, vae_shift: float) -> dict[str, torch.Tensor]:
    """``model``'s weights in ComfyUI's single-file TAESD layout, with its latent scale and shift (fp32 scalars)."""
    tensors = COMFY_TABLE.to_theirs(model.state_dict())
    tensors[SCALE] = torch.tensor(float(vae_scale))
    tensors[SHIFT] = torch.tensor(float(vae_shift))
    return tensors
