"""``train autoencoder``: a new TAESD-architecture autoencoder learns the data set's pictures and is saved in
ComfyUI's TAESD layout with the scale and shift that give unit-variance latents; a continued one with
``autoencoder.train_encoder = false`` trains its decoder alone and keeps its latents exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pixart_delta_core.errors import InputError
from pixart_delta_core.pipeline.images import from_pil
from pixart_delta_core.training.config_file import config_from_dict
from pixart_delta_core.training.loop import train
from pixart_delta_core.vae.autoencoder import TaesdVae, load_vae
from pixart_delta_core.world.dataset import write_dataset
from pixart_delta_core.world.render import render
from pixart_delta_core.world.scenes import sample_scene
from tests.test_training_data import tiny_setup

pytestmark = pytest.mark.usefixtures("one_thread")  # a small network: one thread is faster on busy cores


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Eight pictures of the shapes world (128 px) and their data.jsonl."""
    return write_dataset(tmp_path_factory.mktemp("world"), 8)


def _table(data: Path, output: Path, steps: int, **autoencoder: object) -> dict:
    train_table = {"output": str(output), "cpu": True, "steps": steps, "batch_size": 4, "learning_rate": 1e-3}
    train_table |= {"checkpoint_every": steps, "warmup_steps": 0}
    return {
        "data": {"path": str(data), "resolution": 128, "multi_scale": False},
        "train": train_table,
        "autoencoder": {"crop_size": 32, **autoencoder},
    }


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory) -> Path:
    """A new autoencoder after 30 steps; its saved file."""
    result = train(config_from_dict(_table(world, tmp_path_factory.mktemp("new"), 30), "autoencoder"))
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.8 * first, result.losses  # measured: about 0.4 of the first steps' loss
    return result.weights


def _world_pictures(count: int = 4) -> torch.Tensor:
    return from_pil([render(sample_scene(seed)) for seed in range(100, 100 + count)])  # [B, 3, 128, 128]


def test_a_new_autoencoder_saves_comfyuis_taesd_layout_with_unit_variance_latents(trained) -> None:
    tensors = load_file(str(trained))
    assert {k.split(".")[0] for k in tensors} == {"taesd_encoder", "taesd_decoder", "vae_scale", "vae_shift"}
    vae = load_vae(trained)
    assert isinstance(vae, TaesdVae)
    scaled = vae.encode(_world_pictures(8)) * vae.scaling_factor  # what the transformer works in
    assert abs(scaled.mean().item()) < 0.5 and 0.5 < scaled.std().item() < 2.0, (scaled.mean(), scaled.std())


def test_decoder_training_keeps_the_encoder_and_its_latent_convention(world, trained, tmp_path) -> None:
    table = _table(world, tmp_path / "out", 6, train_encoder=False)
    result = train(config_from_dict({**table, "model": {"vae": str(trained)}}, "autoencoder"))
    before, after = load_file(str(trained)), load_file(str(result.weights))
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("taesd_decoder.") for name in changed), sorted(changed)
    pictures = _world_pictures()
    assert torch.equal(load_vae(trained).encode(pictures), load_vae(result.weights).encode(pictures))


def test_decoder_training_without_a_file_or_from_a_kl_vae_is_refused(world, tmp_path) -> None:
    table = _table(world, tmp_path / "out", 2, train_encoder=False)
    with pytest.raises(InputError, match=r"train_encoder = false trains the decoder of an existing autoencoder"):
        config_from_dict(table, "autoencoder")
    kl = Path(tiny_setup(tmp_path / "kl")["model"]["vae"])
    with pytest.raises(InputError, match=r"continues a TAESD file with its encoder; model\.vae .* is a KL VAE"):
        train(config_from_dict({**table, "model": {"vae": str(kl)}}, "autoencoder"))
    with pytest.raises(InputError, match=r"no such file or folder"):
        train(config_from_dict({**table, "model": {"vae": str(tmp_path / "absent.safetensors")}}, "autoencoder"))
