"""Other model families share PixArt's key names: they are named in the refusal, not reported as a damaged PixArt."""

from __future__ import annotations

import pytest
import torch

from pixart_delta_core.checkpoints.detection import identify
from pixart_delta_core.checkpoints.loading import as_source
from pixart_delta_core.errors import CheckpointError
from pixart_delta_core.models.transformer import inspect_transformer

# Key sets of each family, as their files hold them (tensor shapes do not matter to detection here).
FAMILIES = {
    "LTX-Video": [
        "adaln_single.linear.weight",
        "adaln_single.emb.timestep_embedder.linear_1.weight",
        "caption_projection.linear_1.weight",
        "patchify_proj.weight",
        "transformer_blocks.0.attn1.to_q.weight",
        "transformer_blocks.0.attn1.q_norm.weight",
        "scale_shift_table",
        "proj_out.weight",
    ],
    "Sana": [
        "x_embedder.proj.weight",
        "t_embedder.mlp.0.weight",
        "t_block.1.weight",
        "y_embedder.y_proj.fc1.weight",
        "attention_y_norm.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.mlp.inverted_conv.conv.weight",
        "final_layer.linear.weight",
    ],
    "Hunyuan-DiT": [
        "x_embedder.proj.weight",
        "t_embedder.mlp.0.weight",
        "mlp_t5.0.weight",
        "text_embedding_padding",
        "blocks.0.attn1.Wqkv.weight",
        "final_layer.linear.weight",
    ],
    "key/value token compression": [
        "x_embedder.proj.weight",
        "y_embedder.y_proj.fc1.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.sr.weight",
        "blocks.0.attn.norm.weight",
        "final_layer.linear.weight",
    ],
    "DiT-style transformer with adaLN-Zero": [
        "x_embedder.proj.weight",
        "t_embedder.mlp.0.weight",
        "y_embedder.embedding_table.weight",
        "blocks.0.adaLN_modulation.1.weight",
        "final_layer.linear.weight",
    ],
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_a_look_alike_family_is_named(family: str, prefix: str) -> None:
    state_dict = {prefix + k: torch.empty(2, 2, 1, 1) for k in FAMILIES[family]}
    with pytest.raises(CheckpointError, match=f"not a PixArt transformer: it looks like .*{family}"):
        inspect_transformer(state_dict)
    assert family in identify(as_source(state_dict), "PixArt keys")
