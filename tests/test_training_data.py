"""Training configs, datasets, control extractors and the feature cache; also the tiny training setup
the other training tests share (``tiny_setup``, ``run_table``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixart_delta_core.demo.files import demo_vae, write_demo_models
from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.errors import InputError
from pixart_delta_core.models.transformer import PixArtTransformer
from pixart_delta_core.models.transformer_config import TransformerConfig
from pixart_delta_core.training import cache as cache_module
from pixart_delta_core.training.config import ControlExtractor
from pixart_delta_core.training.config_file import config_from_dict, load_config
from pixart_delta_core.training.control import canny, soft_edge
from pixart_delta_core.training.data import BatchOrder, read_records, training_size

# 64 px images -> 8x8 latents -> 16 patch tokens; caption width 64 = the demo T5's.
TRAIN_TINY = TransformerConfig(
    depth=3, hidden_size=48, num_heads=2, mlp_hidden=96, caption_channels=64, caption_length=16, sample_size=8
)


def tiny_setup(root: Path, images: int = 4, control: bool = True) -> dict:
    """Tiny random models and a dataset of ``images`` 64 px images under ``root``; returns a config table."""
    files = write_demo_models(
        root / "models",
        transformer=randomize_(PixArtTransformer(TRAIN_TINY), 0),
        vae=demo_vae(block_out_channels=(8, 8, 8, 8), norm_num_groups=4),
    )
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(images):
        pixels = np.zeros((64, 64, 3), dtype=np.uint8)
        pixels[8 * (i % 4) : 40, 16:48] = rng.integers(100, 255, 3)  # a coloured box on black
        Image.fromarray(pixels).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a box number {i}")
    model = {"transformer": str(files.transformer), "t5": str(files.t5), "vae": str(files.vae)}
    model["tokenizer"] = str(files.tokenizer)
    data_table = {"path": str(data), "cache": str(root / "cache"), "multi_scale": False}
    if control:
        data_table["control"] = "canny"
    return {"model": model, "data": data_table, "train": {"output": str(root / "out"), "cpu": True}}


def for_method(table: dict, method: str) -> dict:
    """``table`` without ``data.control`` unless ``method`` is controlnet (the others refuse it), with a cache
    folder of its own then (a cache without control latents cannot serve the ControlNet)."""
    if method == "controlnet" or "control" not in table["data"]:
        return table
    data = {k: v for k, v in table["data"].items() if k != "control"}
    return {**table, "data": {**data, "cache": str(data["cache"]) + "-without-control"}}


def run_table(base: dict, output: Path, **train: object) -> dict:
    """``base`` with its own output folder and ``train`` settings."""
    return {**base, "train": {**base["train"], "output": str(output), **train}, "controlnet": {"copies": 1}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is many times faster on busy cores


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    return tiny_setup(tmp_path_factory.mktemp("training"))


def test_config_refuses_unknown_and_bad_settings_by_name(setup) -> None:
    with pytest.raises(InputError, match=r"train\.stepz"):
        config_from_dict({**setup, "train": {**setup["train"], "stepz": 3}}, "base")
    with pytest.raises(InputError, match=r"lora\.rank must be a positive number, found 0"):
        config_from_dict({**setup, "lora": {"rank": 0}}, "lora")
    with pytest.raises(InputError, match=r"train\.mixed_precision must be one of"):
        config_from_dict({**setup, "train": {**setup["train"], "mixed_precision": "fp8"}}, "base")
    with pytest.raises(InputError, match=r"base training needs model\.vae"):
        config_from_dict({**setup, "model": {k: v for k, v in setup["model"].items() if k != "vae"}}, "base")
    with pytest.raises(InputError, match=r"data\.control"):
        config_from_dict({**setup, "data": {k: v for k, v in setup["data"].items() if k != "control"}}, "controlnet")
    with pytest.raises(InputError, match="unknown section"):
        config_from_dict({**setup, "optimiser": {}}, "base")


def test_config_round_trips_through_its_toml(setup, tmp_path) -> None:
    config = config_from_dict(for_method({**setup, "lora": {"rank": 8, "targets": ["attn.qkv"]}}, "lora"), "lora")
    (tmp_path / "run.toml").write_text(config.to_toml())
    assert load_config(tmp_path / "run.toml") == config


def test_caption_dropout_defaults_to_the_methods_recipe(setup) -> None:
    """0.5 for the ControlNet (PixArt-δ's recipe), 0.1 for the base and LoRA (PixArt-α's); a set value wins;
    the saved config says the value the run used."""
    from pixart_delta_core.training.loop import make_trainer
    from tests.helpers import random_transformer

    resolved = {
        m: config_from_dict(for_method(setup, m), m).train.caption_dropout for m in ("base", "lora", "controlnet")
    }
    assert resolved == {"base": 0.1, "lora": 0.1, "controlnet": 0.5}
    controlnet = config_from_dict({**setup, "controlnet": {"copies": 1}}, "controlnet")
    assert "caption_dropout = 0.5\n" in controlnet.to_toml()
    trainer = make_trainer(controlnet, random_transformer(TRAIN_TINY), 0.18215)
    assert trainer.caption_dropout == 0.5
    chosen = config_from_dict({**setup, "train": {**setup["train"], "caption_dropout": 0.2}}, "controlnet")
    assert chosen.train.caption_dropout == 0.2
    with pytest.raises(InputError, match=r"train\.caption_dropout must be in \[0, 1\), found 1\.0"):
        config_from_dict({**setup, "train": {**setup["train"], "caption_dropout": 1.0}}, "base")


def test_the_loss_weighting_reaches_every_diffusion_trainer(setup) -> None:
    from pixart_delta_core.training.config import LossWeighting
    from pixart_delta_core.training.loop import make_trainer
    from pixart_delta_core.training.trainers import timestep_weights
    from tests.helpers import random_transformer

    weighted = {**setup, "train": {**setup["train"], "loss_weighting": "p2", "p2_gamma": 0.5}}
    expected = timestep_weights(LossWeighting.P2, 0.5)
    for method in ("base", "lora", "controlnet"):
        config = config_from_dict(for_method({**weighted, "controlnet": {"copies": 1}}, method), method)
        trainer = make_trainer(config, random_transformer(TRAIN_TINY), 0.18215)
        torch.testing.assert_close(trainer.loss_weights, expected, rtol=0, atol=0, msg=method)
    uniform = make_trainer(config_from_dict(for_method(setup, "base"), "base"), random_transformer(TRAIN_TINY), 0.18)
    assert uniform.loss_weights is None


def test_folder_without_captions_is_refused(tmp_path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(InputError, match=r"1 image\(s\) .* have no same-name .txt caption, e.g. \['a.png'\]"):
        read_records(tmp_path)


def test_jsonl_records_resolve_beside_the_file(tmp_path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    lines = [{"image": "a.png", "caption": " a cat ", "control": "a.png"}, {"image": "a.png", "caption": "b"}]
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    records = read_records(tmp_path / "list.jsonl")
    assert [(r.image, r.caption, r.control) for r in records] == [
        (tmp_path / "a.png", "a cat", tmp_path / "a.png"),
        (tmp_path / "a.png", "b", None),
    ]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "a.png"}))
    with pytest.raises(InputError, match='line 1: expected a "caption" string'):
        read_records(tmp_path / "bad.jsonl")


def test_images_train_at_their_nearest_bin() -> None:
    assert training_size((1024, 512), 512, multi_scale=True) == (352, 704)  # width 2 x height -> the 0.5 bin
    assert training_size((1024, 512), 256, multi_scale=False) == (256, 256)
    with pytest.raises(InputError, match="no aspect-ratio bins at 64 px"):
        training_size((64, 64), 64, multi_scale=True)


def test_canny_traces_the_outline_of_a_box() -> None:
    pixels = np.zeros((32, 32), dtype=np.uint8)
    pixels[8:24, 8:24] = 255
    edges = np.asarray(canny(Image.fromarray(pixels)).convert("L")) > 0
    assert edges[8:24, 6:10].any(axis=1).all() and edges[8:24, 22:26].any(axis=1).all()  # both sides traced
    assert not edges[12:20, 12:20].any() and not edges[:4].any()  # nothing inside the box or far outside
    soft = np.asarray(soft_edge(Image.fromarray(pixels)).convert("L")).astype(float)
    assert soft[16, 7:10].max() > 3 * soft[16, 14:18].max()  # strong at the border, faint in the flat middle


def test_cache_is_built_once_checked_and_resumed(setup, monkeypatch) -> None:
    config = config_from_dict(setup, "controlnet")
    d, m = config.data, config.model
    cache = cache_module.build_cache(m, d.path, d.cache, 64, 16, False, ControlExtractor.CANNY, shard_size=2)
    assert cache.sizes == [(64, 64)] * 4 and cache.shards == 2
    batch = cache.batch([0, 3])
    assert batch.caption.shape == (2, 16, 64) and batch.mean.shape == batch.control.shape == (2, 4, 8, 8)
    assert (batch.std > 0).all()
    first = (d.cache / "shard-00001.safetensors").read_bytes()
    (d.cache / "shard-00001.safetensors").unlink()  # as if interrupted before the last shard
    cache_module.build_cache(m, d.path, d.cache, 64, 16, False, ControlExtractor.CANNY, shard_size=2)
    assert (d.cache / "shard-00001.safetensors").read_bytes() == first

    def no_models(*args, **kwargs):
        raise AssertionError("a complete cache must not load T5 or the VAE")

    monkeypatch.setattr("pixart_delta_core.text.encoder.load_text_encoder", no_models)
    cache_module.build_cache(m, d.path, d.cache, 64, 16, False, ControlExtractor.CANNY, shard_size=2)
    with pytest.raises(InputError, match=r"resolution: cache has 64, the run asks for 128"):
        cache_module.build_cache(m, d.path, d.cache, 128, 16, False, ControlExtractor.CANNY, shard_size=2)
    assert torch.equal(cache_module.FeatureCache(d.cache).batch([3]).mean, batch.mean[1:])


def test_given_control_images_are_encoded_like_the_images(setup, tmp_path) -> None:
    data = Path(setup["data"]["path"])
    lines = [json.dumps({"image": str(p), "caption": "a box", "control": str(p)}) for p in sorted(data.glob("*.png"))]
    (tmp_path / "list.jsonl").write_text("\n".join(lines))
    config = config_from_dict(setup, "controlnet")
    cache = cache_module.build_cache(
        config.model, tmp_path / "list.jsonl", tmp_path / "cache", 64, 16, False, ControlExtractor.GIVEN
    )
    batch = cache.batch([0, 1])
    assert torch.equal(batch.control, batch.mean)  # the control image is the image: same posterior mean
    first = str(sorted(data.glob("*.png"))[0])
    (tmp_path / "bare.jsonl").write_text(json.dumps({"image": first, "caption": "x"}))
    with pytest.raises(InputError, match=r"records without a .control. image"):
        cache_module.build_cache(
            config.model, tmp_path / "bare.jsonl", tmp_path / "cache2", 64, 16, False, ControlExtractor.GIVEN
        )


def test_batches_hold_one_bin_each_and_repeat_from_the_seed() -> None:
    sizes = [(512, 512)] * 5 + [(352, 704)] * 4 + [(704, 352)]  # the last bin is smaller than a batch
    order = BatchOrder(sizes, batch_size=2, seed=7)
    assert order.per_epoch == 4  # 2 + 2 + 0: incomplete batches are dropped
    epoch = [order.batch(i) for i in range(4)]
    assert all(len({sizes[i] for i in batch}) == 1 and len(batch) == 2 for batch in epoch)
    assert len({i for batch in epoch for i in batch}) == 8  # no record twice in an epoch
    assert [BatchOrder(sizes, 2, 7).batch(i) for i in range(4)] == epoch
    assert [order.batch(i) for i in range(4, 8)] != epoch  # the next epoch is shuffled anew
    with pytest.raises(InputError, match="larger than every aspect-ratio bin"):
        BatchOrder(sizes, batch_size=6, seed=0)
