"""A new transformer's initial weights (``models/initialization.py``): the reference's, or with Xavier-uniform
timestep, caption and micro-condition MLPs (``architecture.embedder_init = "xavier"``)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from pixart_delta_core.errors import InputError
from pixart_delta_core.models.initialization import initialize_weights_
from pixart_delta_core.models.transformer import PixArtTransformer
from pixart_delta_core.training.config import EmbedderInit
from pixart_delta_core.training.config_file import config_from_dict
from pixart_delta_core.training.loop import train
from tests.test_training_data import TRAIN_TINY, tiny_setup


def _embedders(model: PixArtTransformer) -> list[nn.Linear]:
    return [model.t_embedder.mlp[0], model.t_embedder.mlp[2], model.t_block[1], *model.y_embedder.y_proj.children()]


def _xavier_bound(layer: nn.Linear) -> float:
    return (6 / (layer.in_features + layer.out_features)) ** 0.5


@pytest.mark.parametrize("small", [True, False])
def test_new_weights_are_the_references_with_small_or_xavier_embedders(small: bool) -> None:
    model = initialize_weights_(PixArtTransformer(TRAIN_TINY), seed=3, small_embedders=small)
    for layer in _embedders(model):
        # N(0, 0.02^2), or uniform in +-bound (std bound / sqrt(3)); these layers hold >= 2,300 weights each
        expected = 0.02 if small else _xavier_bound(layer) / 3**0.5
        assert layer.weight.std().item() == pytest.approx(expected, rel=0.1), layer
        assert not layer.bias.any()
    for block in model.blocks:  # a new model starts as a function of its latents and timestep only
        assert not block.cross_attn.proj.weight.any() and not block.cross_attn.proj.bias.any()
        bound = _xavier_bound(block.attn.qkv)
        assert block.attn.qkv.weight.abs().max().item() <= bound and block.attn.qkv.weight.std().item() > bound / 3
    assert not model.final_layer.linear.weight.any()
    again = initialize_weights_(PixArtTransformer(TRAIN_TINY), seed=3, small_embedders=small)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_embedder_init_is_read_from_the_architecture_section(tmp_path) -> None:
    table = tiny_setup(tmp_path, images=2, control=False)
    table = {**table, "model": {k: v for k, v in table["model"].items() if k != "transformer"}}
    assert config_from_dict(table, "base").architecture.embedder_init is EmbedderInit.REFERENCE
    xavier = config_from_dict({**table, "architecture": {"embedder_init": "xavier"}}, "base")
    assert xavier.architecture.embedder_init is EmbedderInit.XAVIER
    with pytest.raises(InputError, match=r"architecture.embedder_init must be one of"):
        config_from_dict({**table, "architecture": {"embedder_init": "kaiming"}}, "base")
    # A new transformer trained one step keeps the start it was given (a 1e-6 step moves no weight far)
    shape = {"depth": 1, "hidden_size": 48, "num_heads": 2, "caption_length": 16}
    for init, expected in (("reference", 0.02), ("xavier", _xavier_bound(nn.Linear(256, 48)) / 3**0.5)):
        table_of_run = {
            **table,
            "data": {**table["data"], "resolution": 64},
            "architecture": {**shape, "embedder_init": init},
        }
        table_of_run["train"] = {**table["train"], "output": str(tmp_path / init), "steps": 1, "batch_size": 2}
        table_of_run["train"] |= {"learning_rate": 1e-6, "checkpoint_every": 1}
        saved = load_file(str(train(config_from_dict(table_of_run, "base")).weights))
        assert saved["t_embedder.mlp.0.weight"].std().item() == pytest.approx(expected, rel=0.1), init
