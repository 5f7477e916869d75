"""``train autoencoder``: a new TAESD-architecture autoencoder learns the data set's pictures and is saved in
ComfyUI's TAESD layout with the scale and shift that give unit-variance latents; a continued one with
``autoencoder.train_encoder = false`` trains its decoder alone and keeps its latents exactly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pixart_delta_core.demo.embedded_files import embedded_path
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


def _changed(before: Path, after: Path) -> set[str]:
    """The tensors of two TAESD files that differ (compared in fp32: a shipped file is fp16)."""
    old, new = load_file(str(before)), load_file(str(after))
    assert old.keys() == new.keys()
    return {name for name in old if not torch.equal(old[name].float(), new[name].float())}


def _shipped_without(path: Path, dropped: Callable[[str], bool]) -> Path:
    """The shipped autoencoder saved at ``path`` without the tensors ``dropped`` names."""
    tensors = load_file(str(embedded_path("shapes-taesd")))
    save_file({k: v for k, v in tensors.items() if not dropped(k)}, str(path))
    return path


def _continue(world: Path, output: Path, start: Path, steps: int = 4, **autoencoder: object):
    table = _table(world, output, steps, **autoencoder)
    return train(config_from_dict({**table, "model": {"vae": str(start)}}, "autoencoder"))


def test_decoder_training_keeps_the_encoder_and_its_latent_convention(world, tmp_path) -> None:
    # The shipped autoencoder's scale and shift were measured on other pictures than these eight: were they
    # measured again, they would change.
    start = embedded_path("shapes-taesd")
    result = _continue(world, tmp_path / "out", start, train_encoder=False)
    changed = _changed(start, result.weights)
    assert changed and all(name.startswith("taesd_decoder.") for name in changed), sorted(changed)
    pictures = _world_pictures()
    torch.testing.assert_close(load_vae(start).encode(pictures), load_vae(result.weights).encode(pictures))


def test_continuing_with_the_encoder_trains_both_and_measures_the_latents_again(world, tmp_path) -> None:
    start = embedded_path("shapes-taesd")
    changed = _changed(start, _continue(world, tmp_path / "out", start).weights)
    assert {"vae_scale", "vae_shift"} <= changed
    assert any(n.startswith("taesd_encoder.") for n in changed) and any(n.startswith("taesd_decoder.") for n in changed)


def test_a_latent_spread_keeps_the_encoder_and_measures_the_scale_and_shift_anew(world, tmp_path) -> None:
    start = embedded_path("shapes-taesd")
    result = _continue(world, tmp_path / "out", start, steps=1, train_encoder=False, latent_std=3.0)
    changed = _changed(start, result.weights)
    assert {"vae_scale", "vae_shift"} <= changed and not any(n.startswith("taesd_encoder.") for n in changed)
    data_pictures = from_pil([render(sample_scene(seed, 2)) for seed in range(8)])  # the eight it measured
    vae = load_vae(result.weights)
    scaled = vae.encode(data_pictures) * vae.scaling_factor
    assert scaled.mean().item() == pytest.approx(0.0, abs=1e-3) and scaled.std().item() == pytest.approx(3.0, rel=1e-3)
    # An explicit 1 is asked for too: the spread file's latents go back to unit spread.
    unit = _continue(world, tmp_path / "unit", result.weights, steps=1, train_encoder=False, latent_std=1.0)
    vae = load_vae(unit.weights)
    assert (vae.encode(data_pictures) * vae.scaling_factor).std().item() == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(InputError, match=r"autoencoder.latent_std must be a number in \(0, 1000\), found 0"):
        config_from_dict(_table(world, tmp_path / "zero", 1, latent_std=0), "autoencoder")


def test_decoder_training_refuses_what_it_cannot_keep(world, tmp_path) -> None:
    table = _table(world, tmp_path / "out", 2, train_encoder=False)
    with pytest.raises(InputError, match=r"train_encoder = false trains the decoder of an existing autoencoder"):
        config_from_dict(table, "autoencoder")
    start = {"model": {"vae": str(embedded_path("shapes-taesd"))}}
    factor = {**table, **start, "autoencoder": {**table["autoencoder"], "scaling_factor": 0.13025}}
    with pytest.raises(InputError, match=r"autoencoder.scaling_factor 0.13025 would be ignored: .* keeps"):
        train(config_from_dict(factor, "autoencoder"))
    kl = Path(tiny_setup(tmp_path / "kl")["model"]["vae"])
    decoder_only = _shipped_without(tmp_path / "decoder_only.safetensors", lambda k: k.startswith("taesd_encoder."))
    for path, found in ((kl, "a KL VAE"), (decoder_only, "a decoder-only TAESD")):
        with pytest.raises(InputError, match=rf"continues a TAESD file with its encoder; model\.vae .* is {found}"):
            train(config_from_dict({**table, "model": {"vae": str(path)}}, "autoencoder"))
    with pytest.raises(InputError, match=r"no such file or folder"):
        train(config_from_dict({**table, "model": {"vae": str(tmp_path / "absent.safetensors")}}, "autoencoder"))
    large = {**table, **start, "train": {**table["train"], "batch_size": 16}}
    with pytest.raises(InputError, match=r"train.batch_size 16 is larger than the dataset \(8 records\)"):
        train(config_from_dict(large, "autoencoder"))  # before its pictures are read


def test_a_file_without_scale_and_shift_gets_the_familys_as_the_engine_reads_it(world, tmp_path) -> None:
    # madebyollin's TAESD files have no vae_scale/vae_shift: the engine reads them with the family's scaling
    # factor (PixArt-Σ's TAESDXL: 0.13025) and shift 0, and decoder training must write exactly those.
    bare = _shipped_without(tmp_path / "bare.safetensors", lambda k: k in ("vae_scale", "vae_shift"))
    table = _table(world, tmp_path / "out", 1, train_encoder=False, scaling_factor=0.13025)
    result = train(config_from_dict({**table, "model": {"vae": str(bare)}}, "autoencoder"))
    saved = load_file(str(result.weights))
    assert saved["vae_scale"].item() == pytest.approx(0.13025) and saved["vae_shift"].item() == 0.0


def test_an_autoencoder_run_resumes_under_its_own_settings_only(world, trained, tmp_path) -> None:
    output = tmp_path / "out"
    _continue(world, output, embedded_path("shapes-taesd"), steps=1, train_encoder=False)
    # The same settings resume (to step 2) and give what an uninterrupted 2-step run gives.
    table = _table(world, output, 2, train_encoder=False)
    shipped = {"model": {"vae": str(embedded_path("shapes-taesd"))}}
    resumed = train(config_from_dict({**table, **shipped}, "autoencoder"), resume=True)
    whole = _continue(world, tmp_path / "whole", embedded_path("shapes-taesd"), steps=2, train_encoder=False)
    assert not _changed(whole.weights, resumed.weights)
    for start, settings, differs in (
        (trained, {"train_encoder": False}, "model.vae"),
        (embedded_path("shapes-taesd"), {"train_encoder": True}, "autoencoder.train_encoder"),
    ):
        table = _table(world, output, 2, **settings)
        with pytest.raises(InputError, match=rf"--resume: .* made by another config \({differs}"):
            train(config_from_dict({**table, "model": {"vae": str(start)}}, "autoencoder"), resume=True)


def test_a_checkpoint_from_before_a_setting_existed_resumes_under_its_default(world, tmp_path) -> None:
    from pixart_delta_core.training.checks import check_resumed_config

    config = config_from_dict(_table(world, tmp_path / "out", 2), "autoencoder")
    checkpoint = tmp_path / "step-1"
    checkpoint.mkdir()
    older = [line for line in config.to_toml().splitlines() if not line.startswith("crop_size")]
    (checkpoint / "config.toml").write_text("\n".join(older) + "\n")  # written before crop_size existed
    check_resumed_config(config, checkpoint)  # its default then is its default now
    cropped = config_from_dict(_table(world, tmp_path / "out", 2, crop_size=64), "autoencoder")
    with pytest.raises(InputError, match=r"autoencoder.crop_size: 32, now 64"):
        check_resumed_config(cropped, checkpoint)
    spread = config_from_dict(_table(world, tmp_path / "out", 2, latent_std=3.0), "autoencoder")
    (checkpoint / "config.toml").write_text(spread.to_toml())
    with pytest.raises(InputError, match=r"autoencoder.latent_std: 3.0, now None"):  # a setting dropped since
        check_resumed_config(config, checkpoint)
