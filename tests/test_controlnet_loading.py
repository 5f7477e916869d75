"""ControlNet detection and loading: the real layout as meta tensors, small files in every layout,
refusals that name both models, and the reference <-> adapter round trip."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pixart_delta_core.checkpoints.layouts import RenamedSource
from pixart_delta_core.checkpoints.sources import StateDictSource
from pixart_delta_core.demo.random_weights import randomize_
from pixart_delta_core.errors import CheckpointError
from pixart_delta_core.models.controlnet import ControlNetTransformer, inspect_controlnet, load_controlnet
from pixart_delta_core.models.controlnet_config import ADAPTER_TABLE, ControlNetConfig, ControlNetLayout, to_adapter
from pixart_delta_core.models.layers import sincos_pos_embed
from pixart_delta_core.models.transformer import inspect_transformer, load_transformer
from pixart_delta_core.models.transformer_config import (
    REFERENCE_ONLY,
    TransformerConfig,
    TransformerLayout,
    to_diffusers,
)
from tests.helpers import TINY, TINY_MS, manifest_source, random_transformer

MANIFEST = "PixArt-XL-2-1024-ControlNet.pth.json"
LCM_MANIFEST = "PixArt-LCM-XL-2-1024-MS.transformer.safetensors.json"
XL_1024 = TransformerConfig(sample_size=128, micro_conditions=True, interpolation_scale=2.0)
RELEASED = ControlNetConfig(copies=13, hidden_size=1152, num_heads=16, mlp_hidden=4608, caption_channels=4096)


def meta_part(source: StateDictSource, prefix: str) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in source.shapes.items() if k.startswith(prefix)}


# --- the released checkpoint's layout, as meta tensors ----------------------------------------


def test_the_released_checkpoint_is_detected() -> None:
    detected = inspect_controlnet(manifest_source(MANIFEST))
    assert detected.layout is ControlNetLayout.FULL
    assert detected.config == RELEASED
    assert len(detected.tensors) == 13 * 17 + 2  # 15 block tensors + after_proj per copy, before_proj once
    assert all(k.startswith("controlnet.") for k in detected.tensors)
    assert "13 copies" in detected.describe() and "also holds its base" in detected.describe()


@pytest.mark.parametrize("base_manifest", [MANIFEST, LCM_MANIFEST], ids=["own-base", "lcm-base"])
def test_the_released_controlnet_loads_strictly_on_its_base_and_on_lcm(base_manifest: str) -> None:
    base = inspect_transformer(manifest_source(base_manifest)).config
    net = load_controlnet(manifest_source(MANIFEST), base, device="meta")
    expected = {k: s for k, s in manifest_source(MANIFEST).shapes.items() if k.startswith("controlnet.")}
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected


def test_the_released_controlnet_in_the_other_layouts() -> None:
    part = meta_part(manifest_source(MANIFEST), "controlnet.")
    only = inspect_controlnet(StateDictSource(part))
    adapter = inspect_controlnet(StateDictSource(to_adapter(part)))
    assert only.layout is ControlNetLayout.REFERENCE and adapter.layout is ControlNetLayout.ADAPTER
    assert only.config == adapter.config == replace(RELEASED, caption_channels=None)
    assert adapter.tensors.shapes == only.tensors.shapes


@pytest.mark.parametrize(
    ("base", "message"),
    [
        (
            replace(XL_1024, hidden_size=768, mlp_hidden=3072),
            "ControlNet is 1152 wide; the base transformer is 768 wide",
        ),
        (replace(XL_1024, num_heads=8), "ControlNet has 16 heads; the base transformer has 8"),
        (replace(XL_1024, depth=13), r"13 copies feeding base blocks 1\.\.13; the base transformer has depth 13"),
        (
            replace(XL_1024, caption_channels=2048),
            "saved with a base reading 4096-wide captions; the base transformer reads 2048-wide",
        ),
    ],
    ids=["width", "heads", "depth", "caption-width"],
)
def test_a_controlnet_that_does_not_fit_the_base_is_refused_naming_both(base, message: str) -> None:
    with pytest.raises(CheckpointError, match=message) as refused:
        load_controlnet(manifest_source(MANIFEST), base, device="meta")
    assert "ControlNet: ControlNet 1152 wide" in str(refused.value)
    assert f"base transformer: {base.describe()}" in str(refused.value)


def test_a_missing_copy_is_named() -> None:
    tensors = {k: v for k, v in meta_part(manifest_source(MANIFEST), "").items() if not k.startswith("controlnet.5.")}
    with pytest.raises(CheckpointError, match=r"ControlNet copies \[5\] are missing"):
        inspect_controlnet(tensors)


# --- small files in every layout ---------------------------------------------------------------

BASE = TINY_MS  # depth 3, 48 wide, 2 heads (not 72-wide heads: the heads come from the base)


@pytest.fixture(scope="module")
def models():
    base = random_transformer(BASE, seed=1)
    net = randomize_(ControlNetTransformer(ControlNetConfig.for_base(BASE, copies=2)), seed=2)
    return base, net


def write_layouts(base, net, folder: Path) -> dict[str, Path]:
    c = base.config
    pos = sincos_pos_embed(c.hidden_size, c.base_size, c.base_size, c.base_size, c.interpolation_scale).float()[None]
    base_sd = {**base.state_dict(), "pos_embed": pos}
    full = {**{f"base_model.{k}": v for k, v in base_sd.items()}, **net.state_dict()}
    adapter = to_adapter(net.state_dict())
    paths = {
        "full-pth": folder / "PixArt-ControlNet.pth",
        "controlnet-pth": folder / "controlnet.pth",
        "controlnet-safetensors": folder / "controlnet.safetensors",
        "adapter-safetensors": folder / "adapter.safetensors",
        "adapter-folder": folder / "adapter",
        "diffusers-whole-model": folder / "whole.safetensors",
    }
    torch.save({"state_dict": full}, paths["full-pth"])
    torch.save({"state_dict": net.state_dict()}, paths["controlnet-pth"])
    save_file(net.state_dict(), str(paths["controlnet-safetensors"]))
    save_file(adapter, str(paths["adapter-safetensors"]))
    paths["adapter-folder"].mkdir()
    save_file(adapter, str(paths["adapter-folder"] / "diffusion_pytorch_model.safetensors"))
    config = {"_class_name": "PixArtControlNetAdapterModel", "num_layers": 2}
    (paths["adapter-folder"] / "config.json").write_text(json.dumps(config))
    diffusers_base = {k: v for k, v in to_diffusers(base.state_dict()).items() if k not in REFERENCE_ONLY}
    whole = {**{f"transformer.{k}": v for k, v in diffusers_base.items()}}
    whole |= {f"controlnet.{k}": v for k, v in adapter.items()}
    save_file(whole, str(paths["diffusers-whole-model"]))
    return paths


@pytest.fixture(scope="module")
def files(models, tmp_path_factory):
    return write_layouts(*models, tmp_path_factory.mktemp("controlnet"))


LAYOUT_OF = {
    "full-pth": ControlNetLayout.FULL,
    "controlnet-pth": ControlNetLayout.REFERENCE,
    "controlnet-safetensors": ControlNetLayout.REFERENCE,
    "adapter-safetensors": ControlNetLayout.ADAPTER,
    "adapter-folder": ControlNetLayout.ADAPTER,
    "diffusers-whole-model": ControlNetLayout.ADAPTER,
}


@pytest.mark.parametrize("layout", sorted(LAYOUT_OF))
def test_every_layout_loads_the_same_controlnet(models, files, layout: str) -> None:
    _, net = models
    assert inspect_controlnet(files[layout], base_config=BASE).layout is LAYOUT_OF[layout]
    loaded = load_controlnet(files[layout], BASE)
    got = loaded.state_dict()
    assert got.keys() == net.state_dict().keys()
    for key, value in net.state_dict().items():
        assert torch.equal(got[key], value), key
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("layout", ["full-pth", "diffusers-whole-model"])
def test_the_base_of_a_whole_model_file_loads_with_the_transformer_loader(models, files, layout: str) -> None:
    base, _ = models
    hints = {"caption_length": BASE.caption_length, "num_heads": BASE.num_heads}
    detected = inspect_transformer(files[layout], hints=hints)
    expected = TransformerLayout.CONTROLNET_FULL if layout == "full-pth" else TransformerLayout.DIFFUSERS
    assert detected.layout is expected
    loaded = load_transformer(files[layout], hints=hints)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, base.state_dict()[key]), key


def test_the_controlnet_part_drives_another_base_that_fits(files) -> None:
    other = replace(BASE, null_caption=False, sample_size=64, interpolation_scale=1.0)  # like LCM vs α
    net = load_controlnet(files["full-pth"], other, dtype="bf16")
    assert net.dtype == torch.bfloat16 and net.config.copies == 2
    with pytest.raises(CheckpointError, match="24-wide captions; the base transformer reads 32-wide"):
        load_controlnet(files["full-pth"], replace(TINY, depth=3, num_heads=2))


def test_heads_come_from_hints_or_metadata_before_the_base(files, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="ControlNet has 4 heads; the base transformer has 2"):
        load_controlnet(files["controlnet-safetensors"], BASE, hints={"num_heads": 4})
    sd = load_controlnet(files["controlnet-safetensors"], BASE).state_dict()
    tagged = tmp_path / "tagged.safetensors"
    save_file(sd, str(tagged), metadata={"num_heads": "4"})
    with pytest.raises(CheckpointError, match="ControlNet has 4 heads"):
        load_controlnet(tagged, BASE)


@pytest.mark.parametrize("layout", ["controlnet-pth", "adapter-safetensors"])
def test_a_controlnet_file_given_to_the_transformer_loader(files, layout: str) -> None:
    with pytest.raises(
        CheckpointError,
        match=r"PixArt ControlNet (adapter )?without its base model \(give it as the ControlNet",
    ):
        load_transformer(files[layout])


def test_a_transformer_given_to_the_controlnet_loader(models, tmp_path: Path) -> None:
    base, _ = models
    path = tmp_path / "transformer.safetensors"
    save_file(base.state_dict(), str(path))
    with pytest.raises(CheckpointError, match=r"PixArt transformer without ControlNet copies \(load it with the trans"):
        load_controlnet(path, BASE)


def test_another_model_given_to_the_controlnet_loader() -> None:
    with pytest.raises(CheckpointError, match="not a PixArt ControlNet: it looks like a T5 text encoder"):
        load_controlnet(manifest_source("t5xxl_fp16.safetensors.json"), BASE)


def _broken(net: ControlNetTransformer, drop: str = "", add: dict | None = None) -> dict[str, torch.Tensor]:
    return {**{k: v for k, v in net.state_dict().items() if not drop or k != drop}, **(add or {})}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda n: _broken(n, drop="controlnet.1.copied_block.mlp.fc2.weight"),
            r"missing: controlnet\.1\.copied_block",
        ),
        (
            lambda n: _broken(n, add={"controlnet.1.before_proj.weight": torch.zeros(48, 48)}),
            r"unexpected: controlnet\.1\.before_proj\.weight",
        ),
        (lambda n: _broken(n, add={"ema.decay": torch.zeros(1)}), r"unexpected tensors beside .*: ema\.decay"),
        (
            lambda n: _broken(n, add={"controlnet.0.after_proj.weight": torch.zeros(48, 40)}),
            r"should be square, found \[48, 40\]",
        ),
        (lambda n: _broken(n, drop="controlnet.0.after_proj.weight"), "partial PixArt ControlNet"),
        (lambda n: {**_broken(n), **to_adapter(n.state_dict())}, "several ControlNets"),
        (
            lambda n: {k: v for k, v in to_adapter(n.state_dict()).items() if ".attn1.to_v." not in k},
            r"attn1\.to_v\.weight'\] are missing",
        ),
    ],
    ids=["missing-key", "before-proj-on-copy-1", "stray", "wrong-shape", "no-anchor", "two-layouts", "adapter-no-to_v"],
)
def test_broken_controlnets_are_refused_naming_the_keys(models, make, message: str) -> None:
    _, net = models
    with pytest.raises(CheckpointError, match=message):
        load_controlnet(make(net), BASE)


# --- round trip ------------------------------------------------------------------------------


def test_reference_to_adapter_and_back_is_lossless(models) -> None:
    _, net = models
    original = net.state_dict()
    there = to_adapter(original)
    assert "controlnet_blocks.1.transformer_block.attn1.to_k.weight" in there
    assert "controlnet_blocks.0.before_proj.bias" in there and "controlnet_blocks.1.before_proj.bias" not in there
    assert not any(k.startswith("controlnet.") for k in there)
    back = RenamedSource(StateDictSource(there), ADAPTER_TABLE)
    assert set(back) == set(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key
