"""The TAESD key layouts: diffusers' ``AutoencoderTiny`` names and the single-file layout ComfyUI reads.

ComfyUI's VAE Loader recognises a file with ``taesd_encoder.N.*`` and ``taesd_decoder.N.*`` tensors and
the two scalars ``vae_scale`` and ``vae_shift`` (raw latent = encoder(image) / vae_scale + vae_shift).
Its decoder numbers its layers from 1 (layer 0 is the latent clamp, which has no weights), diffusers'
``decoder.layers`` from 0; the encoders number alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderTiny

TAESD_KWARGS = {"latent_channels": 4, "scaling_factor": 1.0}  # diffusers' defaults are TAESD's architecture


def comfy_taesd_state_dict(model: AutoencoderTiny, vae_scale: float, vae_shift: float) -> dict[str, torch.Tensor]:
    """``model``'s weights in ComfyUI's single-file TAESD layout, with its latent scale and shift (fp32 scalars)."""
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        side, _, index, rest = key.split(".", 3)  # encoder|decoder, layers, N, rest
        number = int(index) + (1 if side == "decoder" else 0)
        tensors[f"taesd_{side}.{number}.{rest}"] = value.detach().contiguous()
    tensors["vae_scale"] = torch.tensor(float(vae_scale))
    tensors["vae_shift"] = torch.tensor(float(vae_shift))
    return tensors
