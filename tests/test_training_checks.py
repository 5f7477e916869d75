"""What a user who gets something wrong sees: errors up front, before the feature cache and the models
(misspelt files, unreadable images, a ControlNet or LoRA that does not fit, a batch larger than the data,
a checkpoint of another config), a cache known by its contents, a diverging run stopped, logs and
manifests that do not block the corrected run, and a ControlNet that continues training."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import replace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pixart_delta_core.errors import InputError, PixArtDeltaError
from pixart_delta_core.models.controlnet import ControlNetTransformer
from pixart_delta_core.models.transformer import PixArtTransformer
from pixart_delta_core.training import cache as cache_module
from pixart_delta_core.training.config import LossWeighting
from pixart_delta_core.training.config_file import config_from_dict
from pixart_delta_core.training.loop import train
from pixart_delta_core.training.trainers import ControlNetTrainer, Trainer
from tests.test_training_data import TRAIN_TINY, run_table, tiny_setup

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is many times faster on busy cores


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    return tiny_setup(tmp_path_factory.mktemp("checks"))


def _table(setup: dict, tmp_path, method: str, **train: object) -> dict:
    """A ``method`` run into ``tmp_path / "out"`` with its own cache, so that nothing is shared between tests."""
    table = run_table(setup, tmp_path / "out", **{"batch_size": 2, "steps": 2, "checkpoint_every": 2, **train})
    data = {**table["data"], "cache": str(tmp_path / "cache")}
    if method != "controlnet":
        data.pop("control")
    return {**table, "data": data}


def _build(config) -> cache_module.FeatureCache:
    d = config.data
    return cache_module.build_cache(config.model, d.path, d.cache, 64, 16, False, None, shard_size=2)


def test_a_loaded_controlnet_continues_training(setup, tmp_path) -> None:
    first = train(config_from_dict(_table(setup, tmp_path, "controlnet", learning_rate=1e-3), "controlnet"))
    table = _table(setup, tmp_path / "again", "controlnet", steps=1, learning_rate=1e-3)
    table["model"] = {**table["model"], "controlnet": str(first.weights)}
    table["data"]["cache"] = str(tmp_path / "cache")  # the first run's: same data, T5 and VAE
    second = train(config_from_dict(table, "controlnet"))
    before, after = load_file(first.weights), load_file(second.weights)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_cache_is_known_by_its_contents(setup, tmp_path, monkeypatch) -> None:
    data = tmp_path / "data"
    shutil.copytree(setup["data"]["path"], data)
    t5 = tmp_path / "t5.safetensors"
    shutil.copy(setup["model"]["t5"], t5)
    table = _table(setup, tmp_path, "base")
    table["data"]["path"], table["model"] = str(data), {**table["model"], "t5": str(t5)}
    config = config_from_dict(table, "base")
    _build(config)

    moved = tmp_path / "moved-t5.safetensors"  # the same T5 at another path serves the cache
    shutil.copy(t5, moved)

    def no_models(*args, **kwargs):
        raise AssertionError("a complete cache must not load T5 or the VAE")

    with monkeypatch.context() as patch:
        patch.setattr("pixart_delta_core.text.encoder.load_text_encoder", no_models)
        _build(replace(config, model=replace(config.model, t5=moved)))

    weights = load_file(t5)  # a T5 replaced in place by one of the same size (other weights) does not
    save_file({k: v + 0.5 for k, v in weights.items()}, str(t5))
    with pytest.raises(InputError, match=r"for another run \(model.t5: other contents than the cache's\)"):
        _build(config)
    shutil.copy(moved, t5)
    (data / "2.txt").write_text("a box number two")  # an edited caption
    with pytest.raises(InputError, match=r"made from other records: .* a caption's text"):
        _build(config)


def test_missing_model_files_and_corrupt_images_are_refused_before_any_work(setup, tmp_path, monkeypatch) -> None:
    table = _table(setup, tmp_path, "base")
    table["model"] = {**table["model"], "vae": str(tmp_path / "no-such-vae")}
    with pytest.raises(InputError, match=r"model.vae .*no-such-vae: no such file or folder"):
        train(config_from_dict(table, "base"))
    data = tmp_path / "data"
    shutil.copytree(setup["data"]["path"], data)
    (data / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    table = _table(setup, tmp_path, "base")
    table["data"]["path"] = str(data)

    def no_models(*args, **kwargs):
        raise AssertionError("a bad image must be found before the models load")

    monkeypatch.setattr("pixart_delta_core.text.encoder.load_text_encoder", no_models)
    with pytest.raises(InputError, match=r"the image .*1\.png cannot be read"):
        train(config_from_dict(table, "base"))
    assert not (tmp_path / "cache" / cache_module.MANIFEST).exists()


def test_a_failed_cache_build_leaves_no_manifest_that_blocks_the_next(setup, tmp_path, monkeypatch) -> None:
    config = config_from_dict(_table(setup, tmp_path, "base"), "base")

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "_write_shard", fail)
        with pytest.raises(RuntimeError):
            _build(config)
    assert not (config.data.cache / cache_module.MANIFEST).exists()
    cache = cache_module.build_cache(config.model, config.data.path, config.data.cache, 64, 32, False, None, 2)
    assert cache.key.caption_length == 32 and cache.shards == 2


@pytest.fixture(scope="module")
def controlnets(tmp_path_factory) -> dict:
    """ControlNet files: one for a base 64 wide (the tiny base is 48), one of 1 copy for the tiny base."""
    root = tmp_path_factory.mktemp("controlnets")
    bases = {
        "wide": PixArtTransformer(replace(TRAIN_TINY, hidden_size=64, mlp_hidden=128)),
        "one": PixArtTransformer(TRAIN_TINY),
    }
    for name, base in bases.items():
        (root / name).mkdir()
        ControlNetTrainer(base, ControlNetTransformer.from_base(base, 1), 0.18215, 0.5).save(root / name)
    return {name: str(root / name / "controlnet.safetensors") for name in bases}


@pytest.mark.parametrize(
    ("method", "change", "message"),
    [
        ("controlnet", {"model": {"controlnet": "wide"}}, r"does not fit the base transformer: .*64"),
        (
            "controlnet",
            {"model": {"controlnet": "one"}, "controlnet": {"copies": 2}},
            r"trained with controlnet.copies = 1, this config says 2",
        ),
        ("lora", {"lora": {"targets": ["attn.qkv", "attn.nope"]}}, r"lora.targets \['attn.nope'\] name no linear"),
        ("base", {"train": {"batch_size": 8}}, r"batch_size 8 is larger than the dataset \(4 records\)"),
        (
            "lcm",
            {"data": {"resolution": 40}},
            r"data.resolution must be a multiple of 16 px \(the VAE's downscale 8 times the transformer's patch size "
            r"2\), found 40 \(nearest: 32 or 48\)",
        ),
    ],
)
def test_what_the_base_decides_is_checked_before_the_cache(setup, tmp_path, controlnets, method, change, message):
    table = _table(setup, tmp_path, method)
    for section, values in change.items():
        table[section] = {**table.get(section, {}), **values}
    if "controlnet" in table["model"]:
        table["model"]["controlnet"] = controlnets[table["model"]["controlnet"]]
    with pytest.raises(InputError, match=message):
        train(config_from_dict(table, method))
    assert not (tmp_path / "cache").exists()


def test_resuming_under_another_config_is_refused(setup, tmp_path) -> None:
    table = _table(setup, tmp_path, "lora")
    table["lora"] = {"rank": 2, "alpha": 2.0, "targets": ["attn.qkv"]}
    train(config_from_dict(table, "lora"))
    table["train"]["steps"] = 4
    with pytest.raises(InputError, match=r"made by another config \(lora.rank: 2, now 4\)"):
        train(config_from_dict({**table, "lora": {**table["lora"], "rank": 4}}, "lora"), resume=True)
    with pytest.raises(InputError, match=r"made by another config \(method: 'lora', now 'base'\)"):
        train(config_from_dict({**table, "lora": {}}, "base"), resume=True)


def test_a_diverging_run_stops_at_its_first_bad_loss_without_a_checkpoint(setup, tmp_path, monkeypatch) -> None:
    loss = Trainer.loss
    monkeypatch.setattr(Trainer, "loss", lambda *args: loss(*args) * float("nan"))
    with pytest.raises(PixArtDeltaError, match=r"diverged: the loss is nan at step 1; lower train.learning_rate"):
        train(config_from_dict(_table(setup, tmp_path, "base"), "base"))
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_resumed_log_keeps_each_step_once_and_a_new_run_starts_a_new_log(setup, tmp_path) -> None:
    table = _table(setup, tmp_path, "base", steps=4)
    train(config_from_dict(table, "base"))
    shutil.rmtree(tmp_path / "out" / "checkpoints" / "step-0000004")  # as if it crashed after logging step 4
    train(config_from_dict(table, "base"), resume=True)
    with (tmp_path / "out" / "log.csv").open() as f:
        assert [row["step"] for row in csv.DictReader(f)] == ["1", "2", "3", "4"]
    shutil.rmtree(tmp_path / "out" / "checkpoints")  # a log without checkpoints: a new run
    train(config_from_dict({**table, "train": {**table["train"], "steps": 1}}, "base"))
    with (tmp_path / "out" / "log.csv").open() as f:
        assert [row["step"] for row in csv.DictReader(f)] == ["1"]


def test_fp16_on_the_cpu_is_said_to_compute_in_fp32(setup, tmp_path, caplog) -> None:
    table = _table(setup, tmp_path, "base", steps=1, mixed_precision="fp16")
    with caplog.at_level(logging.WARNING):
        train(config_from_dict(table, "base"))
    assert "does not apply on the CPU" in caplog.text


def test_settings_a_run_would_ignore_are_refused_or_said(setup, tmp_path, caplog) -> None:
    table = _table(setup, tmp_path, "base")
    with pytest.raises(InputError, match=r"\[architecture\] shapes a new transformer .* loads model.transformer"):
        config_from_dict({**table, "architecture": {"depth": 2}}, "base")
    with pytest.raises(InputError, match=r"data.control is for controlnet training only; lora"):
        config_from_dict({**table, "data": {**table["data"], "control": "canny"}}, "lora")
    no_cache = {**table, "data": {k: v for k, v in table["data"].items() if k != "cache"}}
    with pytest.raises(InputError, match=r"base training needs data.cache"):
        config_from_dict(no_cache, "base")
    autoencoder = {**no_cache, "model": {}, "data": {**no_cache["data"], "resolution": 64}}
    assert config_from_dict(autoencoder, "autoencoder").data.cache is None
    weighted = {**table, "train": {**table["train"], "loss_weighting": "p2"}}
    assert config_from_dict(weighted, "base").train.loss_weighting is LossWeighting.P2
    lora_lcm = {**weighted, "lora": {"lcm": True}}
    for method, table_of_method in (
        ("lcm", weighted),
        ("lora", lora_lcm),
        ("autoencoder", {**autoencoder, "train": weighted["train"]}),
    ):
        with pytest.raises(InputError, match=r"train.loss_weighting weighs the diffusion loss .* drop it"):
            config_from_dict(table_of_method, method)
    with pytest.raises(InputError, match=r"\[autoencoder\] settings are for autoencoder training; .* trains base"):
        config_from_dict({**table, "autoencoder": {"latent_std": 3.0}}, "base")
    with pytest.raises(InputError, match=r"train.loss_weighting must be one of"):
        config_from_dict({**table, "train": {**table["train"], "loss_weighting": "min-snr"}}, "base")
    with pytest.raises(InputError, match=r"train.p2_gamma shapes train.loss_weighting = \"p2\" only"):
        config_from_dict({**table, "train": {**table["train"], "p2_gamma": 0.5}}, "base")
    with pytest.raises(InputError, match=r"train.p2_gamma must be a number in \(0, 10\], found 0"):
        config_from_dict({**table, "train": {**table["train"], "loss_weighting": "p2", "p2_gamma": 0}}, "base")
    with caplog.at_level(logging.WARNING):
        config_from_dict({**table, "method": "lcm"}, "base")
    assert "training method 'base' (command line) overrides the config's method = 'lcm'" in caplog.text


def test_captions_all_empty_are_refused_some_empty_said(tmp_path, caplog) -> None:
    from pixart_delta_core.training.data import read_records

    records = [{"image": f"{i}.png", "caption": "" if i else "a box"} for i in range(3)]
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "some.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (tmp_path / "none.jsonl").write_text("\n".join(json.dumps({**r, "caption": " "}) for r in records))
    with pytest.raises(InputError, match=r"none.jsonl has no captions: all 3 are empty"):
        read_records(tmp_path / "none.jsonl")
    with caplog.at_level(logging.WARNING):
        assert len(read_records(tmp_path / "some.jsonl")) == 3
    assert "2 of 3 captions" in caplog.text and "unconditional" in caplog.text


def test_a_controlnet_of_one_copy_says_so() -> None:
    from pixart_delta_core.models.controlnet_config import ControlNetConfig

    assert "and 1 copy (MLP" in ControlNetConfig.for_base(TRAIN_TINY, 1).describe()
    assert "and 2 copies (MLP" in ControlNetConfig.for_base(TRAIN_TINY, 2).describe()


def test_checkpoint_folders_load_their_own_weights_and_adapter_settings(setup, tmp_path, caplog) -> None:
    from pixart_delta_core.models.lora_config import read_lora
    from pixart_delta_core.models.transformer import load_transformer

    base = train(config_from_dict(_table(setup, tmp_path / "base", "base"), "base"))
    from_folder, from_file = load_transformer(base.weights.parent), load_transformer(base.weights)
    assert (base.weights.parent / "model.safetensors").is_file()  # accelerate's, beside ours
    want = from_file.state_dict()
    assert all(torch.equal(value, want[key]) for key, value in from_folder.state_dict().items())
    table = _table(setup, tmp_path / "lora", "lora")
    lora = train(config_from_dict({**table, "lora": {"rank": 2, "alpha": 4.0, "targets": ["attn.qkv"]}}, "lora"))
    with caplog.at_level(logging.WARNING):
        assert read_lora(lora.weights.parent).targets.keys() == read_lora(lora.weights).targets.keys()
    assert "no alpha in the file" not in caplog.text
