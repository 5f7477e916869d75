"""A new transformer's initial weights, as the reference initialises PixArt (``PixArt.initialize_weights``).

Every linear layer Xavier-uniform with zero bias, the patch embedding Xavier over its flattened kernel, the
timestep, caption and micro-condition MLPs and the timestep modulation N(0, 0.02^2), the cross-attention
output projections and the final linear layer zero (a new model starts as a function of its input latents
and timestep only), modulation tables and the null caption N(0, 1/width) (docs/REFERENCE.md §1).
"""

from __future__ import annotations

import torch
from torch import nn

from .transformer import PixArtTransformer


@torch.no_grad()
def initialize_weights_(model: PixArtTransformer, seed: int = 0, small_embedders: bool = True) -> PixArtTransformer:
    """Fill ``model`` in place with the reference's initial weights, drawn from ``seed``; returns it.

    ``small_embedders = False`` leaves the timestep, caption and micro-condition MLPs and the timestep
    modulation Xavier-uniform like every other linear layer. Their N(0, 0.02^2) start makes the timestep's
    modulation (about 0.006) and the caption tokens (about 0.02) tiny beside the image tokens, so a new model
    learns what the timestep and the caption mean only slowly: fine for the reference's long runs, too slow
    for a short one (the embedded model's teacher, ``scripts/embedded_model/teacher.toml``)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    patch = model.x_embedder.proj
    nn.init.xavier_uniform_(patch.weight.view(patch.weight.shape[0], -1))
    nn.init.zeros_(patch.bias)
    small = [model.t_embedder.mlp[0], model.t_embedder.mlp[2], model.t_block[1]]
    small += [model.y_embedder.y_proj.fc1, model.y_embedder.y_proj.fc2]
    for name in ("csize_embedder", "ar_embedder"):
        embedder = getattr(model, name, None)
        if embedder is not None:
            small += [embedder.mlp[0], embedder.mlp[2]]
    for layer in small if small_embedders else ():
        nn.init.normal_(layer.weight, std=0.02)
    for block in model.blocks:
        nn.init.zeros_(block.cross_attn.proj.weight)
        nn.init.zeros_(block.cross_attn.proj.bias)
        block.scale_shift_table.copy_(torch.randn_like(block.scale_shift_table) / model.config.hidden_size**0.5)
    nn.init.zeros_(model.final_layer.linear.weight)
    nn.init.zeros_(model.final_layer.linear.bias)
    final = model.final_layer.scale_shift_table
    final.copy_(torch.randn_like(final) / model.config.hidden_size**0.5)
    if model.config.null_caption:
        null = model.y_embedder.y_embedding
        null.copy_(torch.randn_like(null) / null.shape[-1] ** 0.5)
    return model
