"""A detection hint of a name the model does not take (a typo such as ``scaling_factr``) is refused, naming it, the
closest name it takes and every name it takes, for each model that takes hints (checkpoints.hints.check_names);
without the check it was dropped without a word and the file's value stood."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from pixart_delta_core.errors import CheckpointError
from pixart_delta_core.models.controlnet import ControlNetTransformer, inspect_controlnet, load_controlnet
from pixart_delta_core.models.controlnet_config import ControlNetConfig
from pixart_delta_core.models.transformer import inspect_transformer, load_transformer
from pixart_delta_core.pipeline.generation import PixArtPipeline
from pixart_delta_core.vae.autoencoder import inspect_vae, load_vae
from pixart_delta_core.vae.taesd_layout import TAESD_KWARGS
from pixart_delta_core.vae.vae_config import SD_VAE
from tests.helpers import TINY, random_transformer

KL_NAMES = (
    "block_out_channels, force_upcast, in_channels, latent_channels, layers_per_block, norm_num_groups, "
    "out_channels, scaling_factor"
)


def meta_state_dict(model: type[torch.nn.Module], **kwargs: object) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return model(**kwargs).state_dict()


def test_a_vae_hint_of_an_unknown_name_is_refused_naming_the_close_one_and_the_names_it_takes() -> None:
    kl = meta_state_dict(AutoencoderKL, **SD_VAE.diffusers_kwargs())
    message = re.escape(
        "unknown hint 'scaling_factr' (did you mean 'scaling_factor'?) for an SD-style (KL) VAE; the hints it "
        f"takes: {KL_NAMES}"
    )
    for loader in (inspect_vae, load_vae):
        with pytest.raises(CheckpointError, match=message):
            loader(kl, hints={"scaling_factr": 0.5})
    with pytest.raises(CheckpointError, match=r"unknown hints 'sample_size', 'act_fn' for an SD-style \(KL\) VAE"):
        inspect_vae(kl, hints={"scaling_factor": 0.13025, "sample_size": 512, "act_fn": "silu"})
    assert inspect_vae(kl, hints={"scaling_factor": 0.13025}).config.scaling_factor == 0.13025


def test_a_taesd_hint_of_a_name_taesd_does_not_take_is_refused() -> None:
    taesd = meta_state_dict(AutoencoderTiny, **TAESD_KWARGS)
    with pytest.raises(CheckpointError, match=r"unknown hint 'latent_channel' \(did you mean 'latent_channels'\?\)"):
        inspect_vae(taesd, hints={"latent_channel": 4})
    with pytest.raises(CheckpointError, match=r"unknown hint 'norm_num_groups' for TAESD; the hints it takes: act_fn"):
        inspect_vae(taesd, hints={"norm_num_groups": 32})  # the KL VAE's, which TAESD has not
    assert inspect_vae(taesd, hints={"latent_channels": 4, "act_fn": "relu"}).config.latent_channels == 4


def test_a_transformer_hint_of_an_unknown_name_is_refused_on_every_surface() -> None:
    weights = random_transformer(TINY).reference_state_dict()
    message = re.escape(
        "unknown hint 'num_head' (did you mean 'num_heads'?) for a PixArt transformer; the hints it takes: "
        "caption_length, interpolation_scale, num_attention_heads, num_heads, sample_size"
    )
    with pytest.raises(CheckpointError, match=message):
        inspect_transformer(weights, {"num_head": 4})
    with pytest.raises(CheckpointError, match=message):
        load_transformer(weights, hints={"num_head": 4})
    with pytest.raises(CheckpointError, match=message):
        PixArtPipeline(weights, "t5", "vae", hints={"num_head": 4}).transformer_checkpoint  # noqa: B018
    hints = {"num_attention_heads": 4, "caption_length": 16, "sample_size": 16, "interpolation_scale": 1.0}
    assert inspect_transformer(weights, hints).config.num_heads == 4


def test_a_controlnet_hint_of_a_name_it_does_not_take_is_refused() -> None:
    weights = ControlNetTransformer(ControlNetConfig.for_base(TINY, copies=1)).state_dict()
    message = re.escape(
        "unknown hint 'sample_size' for a PixArt ControlNet; the hints it takes: num_attention_heads, num_heads"
    )
    with pytest.raises(CheckpointError, match=message):
        inspect_controlnet(weights, {"num_heads": 4, "sample_size": 16})  # the transformer's, not the ControlNet's
    with pytest.raises(CheckpointError, match=r"unknown hint 'heads' \(did you mean 'num_heads'\?\)"):
        load_controlnet(weights, TINY, hints={"heads": 4})
    assert inspect_controlnet(weights, {"num_attention_heads": 4}).config.num_heads == 4
