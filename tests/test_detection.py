"""Detection on the real checkpoint layouts, rebuilt as meta tensors from their manifests."""

from __future__ import annotations

import json
from dataclasses import asdict, fields, replace

import pytest
import torch

from pixart_delta_core.checkpoints.sources import StateDictSource
from pixart_delta_core.errors import CheckpointError
from pixart_delta_core.models.transformer_config import (
    REFERENCE_ONLY,
    TransformerConfig,
    TransformerLayout,
    detect_transformer,
    to_diffusers,
)
from pixart_delta_core.text.t5 import TIED, build_t5
from pixart_delta_core.text.t5_config import T5_V1_1_XXL, T5Layout, detect_t5
from tests.helpers import COMFYUI_T5_PREFIX, MANIFESTS, manifest_source

XL = TransformerConfig(depth=28, hidden_size=1152, num_heads=16, caption_channels=4096, mlp_hidden=4608)
ALPHA_1024_MS = replace(XL, sample_size=128, interpolation_scale=2.0, micro_conditions=True)

EXPECTED = {
    "PixArt-XL-2-256x256.pth.json": (TransformerLayout.REFERENCE, replace(XL, sample_size=32, interpolation_scale=1.0)),
    "PixArt-XL-2-512x512.pth.json": (TransformerLayout.REFERENCE, replace(XL, sample_size=64, interpolation_scale=1.0)),
    "PixArt-XL-2-1024-MS.pth.json": (TransformerLayout.REFERENCE, ALPHA_1024_MS),
    "PixArt-Sigma-XL-2-1024-MS.pth.json": (
        TransformerLayout.REFERENCE,
        replace(XL, sample_size=128, interpolation_scale=2.0, caption_length=300),
    ),
    "PixArt-XL-2-1024-ControlNet.pth.json": (TransformerLayout.CONTROLNET_FULL, ALPHA_1024_MS),
    "PixArt-LCM-XL-2-1024-MS.transformer.safetensors.json": (
        TransformerLayout.DIFFUSERS,
        replace(ALPHA_1024_MS, null_caption=False),
    ),
}


@pytest.mark.parametrize("manifest", sorted(EXPECTED))
def test_every_real_layout_is_recognised(manifest: str) -> None:
    detected = detect_transformer(manifest_source(manifest))
    layout, config = EXPECTED[manifest]
    assert detected.layout is layout
    assert detected.config == config


def test_controlnet_checkpoint_base_part_has_only_base_keys() -> None:
    detected = detect_transformer(manifest_source("PixArt-XL-2-1024-ControlNet.pth.json"))
    assert detected.prefix == "base_model."
    assert not any(k.startswith("controlnet.") for k in detected.tensors.shapes)
    assert detected.tensors.shapes["blocks.27.attn.qkv.weight"] == (3456, 1152)


def test_diffusers_layout_is_seen_in_reference_names() -> None:
    detected = detect_transformer(manifest_source("PixArt-LCM-XL-2-1024-MS.transformer.safetensors.json"))
    shapes = detected.tensors.shapes
    assert shapes["blocks.0.attn.qkv.weight"] == (3456, 1152)
    assert shapes["blocks.0.cross_attn.kv_linear.bias"] == (2304,)
    assert shapes["t_block.1.weight"] == (6912, 1152)
    assert not any(k.startswith(("transformer_blocks.", "adaln_single.")) for k in shapes)


def test_depth_42_variant_takes_its_depth_from_the_weights() -> None:
    sigma = manifest_source("PixArt-Sigma-XL-2-1024-MS.pth.json")
    tensors = {k: torch.empty(s, device="meta") for k, s in sigma.shapes.items()}
    for index in range(28, 42):
        for key, shape in sigma.shapes.items():
            if key.startswith("blocks.0."):
                tensors[key.replace("blocks.0.", f"blocks.{index}.", 1)] = torch.empty(shape, device="meta")
    assert detect_transformer(StateDictSource(tensors)).config.depth == 42


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", "module.", "model."])
def test_saver_prefixes_are_stripped(prefix: str) -> None:
    source = manifest_source("PixArt-XL-2-512x512.pth.json")
    tensors = {prefix + k: torch.empty(s, device="meta") for k, s in source.shapes.items()}
    detected = detect_transformer(StateDictSource(tensors))
    assert detected.prefix == prefix
    assert detected.config == EXPECTED["PixArt-XL-2-512x512.pth.json"][1]


def test_diffusers_layout_without_micro_conditions_needs_its_folder_config() -> None:
    sigma = manifest_source("PixArt-Sigma-XL-2-1024-MS.pth.json")
    meta = {k: torch.empty(s, device="meta") for k, s in sigma.shapes.items()}
    diffusers = StateDictSource({k: v for k, v in to_diffusers(meta).items() if k not in REFERENCE_ONLY})
    with pytest.raises(CheckpointError, match=r"PixArt-α .*or PixArt-Σ"):
        detect_transformer(diffusers)
    folder = {"sample_size": 128, "interpolation_scale": 2, "_pipeline_class": "PixArtSigmaPipeline"}
    config = detect_transformer(diffusers, config=folder).config
    assert config == replace(EXPECTED["PixArt-Sigma-XL-2-1024-MS.pth.json"][1], null_caption=False)


def _without(source: StateDictSource, drop: str) -> StateDictSource:
    return StateDictSource(
        {k: torch.empty(s, device="meta") for k, s in source.shapes.items() if not k.startswith(drop)}
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: manifest_source("t5xxl_fp16.safetensors.json"), "T5 text encoder"),
        (lambda: StateDictSource({}), "no tensors"),
        (lambda: _without(manifest_source("PixArt-XL-2-1024-ControlNet.pth.json"), "base_model."), "ControlNet"),
        (lambda: StateDictSource({"decoder.up.0.block.0.conv1.weight": torch.empty(1)}), "VAE"),
        (
            lambda: StateDictSource({"model.diffusion_model.input_blocks.0.0.weight": torch.empty(1)}),
            "Stable Diffusion UNet",
        ),
        (lambda: StateDictSource({"something.else": torch.empty(1)}), "unknown model"),
        (lambda: _without(manifest_source("PixArt-XL-2-512x512.pth.json"), "blocks.5."), r"blocks \[5\] are missing"),
        (
            lambda: _without(manifest_source("PixArt-XL-2-1024-MS.pth.json"), "ar_embedder."),
            "only one of the two micro",
        ),
    ],
    ids=["t5", "empty", "controlnet-only", "vae", "sd-unet", "unknown", "missing-block", "half-micro"],
)
def test_refusals_say_what_the_file_looks_like(build, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        detect_transformer(build())


# --- T5-XXL as ComfyUI users hold it (manifests) ------------------------------------------------


def test_embedded_xxl_config_matches_t5_v1_1_xxl() -> None:
    real = json.loads((MANIFESTS / "t5-v1_1-xxl.config.json").read_text())
    assert {f.name: real[f.name] for f in fields(T5_V1_1_XXL)} == asdict(T5_V1_1_XXL)


@pytest.mark.parametrize("variant", ["fp16", "fp8_e4m3fn", "prefixed"])
def test_the_xxl_single_file_layout_is_recognised(variant: str) -> None:
    source = manifest_source("t5xxl_fp16.safetensors.json")
    if variant == "fp8_e4m3fn":
        source = type(source)(
            {k: torch.empty(s, dtype=torch.float8_e4m3fn, device="meta") for k, s in source.shapes.items()}
        )
    if variant == "prefixed":
        source = type(source)({COMFYUI_T5_PREFIX + k: torch.empty(s, device="meta") for k, s in source.shapes.items()})
    found = detect_t5(source)
    assert found.config == T5_V1_1_XXL and found.layout is T5Layout.TRANSFORMERS
    described = found.describe()
    assert described.startswith("transformers layout") and ": T5-v1.1-XXL encoder" in described
    assert "4.76 B parameters" in described
    expected = {
        k: tuple(v.shape) for k, v in build_t5(found.config, torch.bfloat16).state_dict().items() if k not in TIED
    }
    assert expected == found.tensors.shapes
