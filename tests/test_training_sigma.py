"""A ControlNet trained on a PixArt-Σ base: 300 caption tokens, the SDXL VAE's scaling, Σ's file layout."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from pixart_delta_core.demo.files import demo_vae, write_demo_models
from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.models.controlnet import load_controlnet
from pixart_delta_core.models.transformer import PixArtTransformer, inspect_transformer, load_transformer
from pixart_delta_core.models.transformer_config import SIGMA_TOKENS, default_interpolation
from pixart_delta_core.sampling.samplers import ControlSchedule, SamplingSettings, sample
from pixart_delta_core.text.embedding import TextEmbedding
from pixart_delta_core.training.cache import MANIFEST
from pixart_delta_core.training.config_file import config_from_dict
from pixart_delta_core.training.loop import train
from tests.test_training_data import TRAIN_TINY, run_table, tiny_setup

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is many times faster on busy cores

# Σ's shape: 300 caption tokens, no micro-conditions, its own position interpolation
SIGMA_TINY = replace(
    TRAIN_TINY, caption_length=SIGMA_TOKENS, interpolation_scale=default_interpolation(8, SIGMA_TOKENS)
)
SDXL_SCALING = 0.13025


def test_controlnet_trains_on_a_sigma_base_and_steers_it(tmp_path) -> None:
    setup = tiny_setup(tmp_path)
    vae = demo_vae(block_out_channels=(8, 8, 8, 8), norm_num_groups=4)
    files = write_demo_models(tmp_path / "sigma", transformer=randomize_(PixArtTransformer(SIGMA_TINY), 0), vae=vae)
    config = json.loads((files.vae / "config.json").read_text())
    del config["scaling_factor"]  # the file does not say: the base's family decides (the SDXL VAE's for Σ)
    (files.vae / "config.json").write_text(json.dumps(config))
    assert inspect_transformer(files.transformer).config == SIGMA_TINY  # the file reads back as Σ
    setup["model"] = {**setup["model"], "transformer": str(files.transformer), "vae": str(files.vae)}
    options = {"batch_size": 2, "learning_rate": 1e-3, "steps": 3, "checkpoint_every": 3}
    result = train(config_from_dict(run_table(setup, tmp_path / "out", **options), "controlnet"))
    assert all(torch.isfinite(torch.tensor(result.losses)))

    cache = json.loads((tmp_path / "cache" / MANIFEST).read_text())
    assert cache["scaling_factor"] == SDXL_SCALING and cache["key"]["caption_length"] == SIGMA_TOKENS
    base = load_transformer(files.transformer)
    controlnet = load_controlnet(result.weights, base.config)
    assert controlnet.config.copies == 1
    generator = torch.Generator().manual_seed(0)
    caption = TextEmbedding(torch.randn(1, SIGMA_TOKENS, 64, generator=generator), torch.ones(1, SIGMA_TOKENS))
    noise, edges = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(2, 1, 4, 8, 8, generator=generator)
    settings = SamplingSettings(steps=2)
    plain = sample(base, caption, settings, noise)
    steered = [
        sample(base, caption, settings, noise, control=ControlSchedule(controlnet.hook(base, e * SDXL_SCALING)))
        for e in edges
    ]
    # trained from zero projections, the ControlNet now moves the image, and differently for other controls
    assert (steered[0] - plain).abs().max() > 1e-3
    assert (steered[0] - steered[1]).abs().max() > 1e-3
