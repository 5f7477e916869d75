"""The detection shared by every model: ``find_prefix`` (none / several / one) and the one generic
``DetectedCheckpoint`` that all four detectors return."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL

from pixart_delta_core.checkpoints.detection import DetectedCheckpoint, find_prefix
from pixart_delta_core.checkpoints.sources import StateDictSource
from pixart_delta_core.errors import CheckpointError, InputError
from pixart_delta_core.models.controlnet import ControlNetTransformer
from pixart_delta_core.models.controlnet_config import ControlNetConfig, ControlNetLayout, detect_controlnet
from pixart_delta_core.models.transformer import PixArtTransformer, load_transformer
from pixart_delta_core.models.transformer_config import TransformerConfig, TransformerLayout, detect_transformer
from pixart_delta_core.text.t5 import TIED, build_t5
from pixart_delta_core.text.t5_config import T5EncoderConfig, T5Layout, detect_t5
from pixart_delta_core.vae.vae_config import VaeConfig, VaeLayout, detect_vae
from tests.helpers import SMALL_T5, TINY

ANCHORS = ("net.0.weight", "net_blocks.0.weight")


def _source(*keys: str) -> StateDictSource:
    return StateDictSource({k: torch.empty(2, 2, device="meta") for k in keys}, origin="test.safetensors")


def _find(source: StateDictSource, **options) -> tuple[str, str]:
    return find_prefix(source, ANCHORS, "a test net", "test nets", "keys such as net.0.weight", **options)


# --- find_prefix ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "found"),
    [
        (("net.0.weight", "net.1.weight"), ("", "net.0.weight")),
        (("model.net_blocks.0.weight", "other.thing"), ("model.", "net_blocks.0.weight")),
        (("a.b.net.0.weight", "extranet.0.weight"), ("a.b.", "net.0.weight")),  # "extra" is no dotted prefix
    ],
    ids=["top-level", "under-a-prefix", "dot-boundary"],
)
def test_one_prefix_is_found_with_its_anchor(keys: tuple[str, ...], found: tuple[str, str]) -> None:
    assert _find(_source(*keys)) == found


def test_none_found_says_what_was_expected_and_what_the_file_is() -> None:
    with pytest.raises(
        CheckpointError, match=r"test\.safetensors: not a test net: unknown model .* expected keys such"
    ):
        _find(_source("something.else"))
    with pytest.raises(CheckpointError, match="not a test net: it looks like a VAE"):
        _find(_source("decoder.up.0.block.0.conv1.weight"))
    with pytest.raises(CheckpointError, match="not a test net: a partial net"):
        _find(_source("net.1.weight"), explain=lambda s: "a partial net" if "net.1.weight" in s.shapes else None)


def test_several_found_names_the_prefixes_seen() -> None:
    with pytest.raises(CheckpointError, match=r"several test nets \(under \['a\.', 'b\.'\]\); expected one"):
        _find(_source("a.net.0.weight", "b.net.0.weight"))
    # two layouts under one prefix: the keys say which
    with pytest.raises(
        CheckpointError, match=r"several test nets \(found \['net\.0\.weight', 'net_blocks\.0\.weight'\]\)"
    ):
        _find(_source("net.0.weight", "net_blocks.0.weight"))


def test_keys_under_another_part_do_not_count() -> None:
    source = _source("encoder.net.0.weight", "decoder.net.0.weight")
    assert _find(source, not_under=("decoder.",)) == ("encoder.", "net.0.weight")
    with pytest.raises(CheckpointError, match="several test nets"):
        _find(source)


# --- one generic result -----------------------------------------------------------------------------


def _meta_state(module: torch.nn.Module, drop: tuple[str, ...] = ()) -> StateDictSource:
    return StateDictSource(
        {k: torch.empty(v.shape, device="meta") for k, v in module.state_dict().items() if k not in drop}
    )


def _detections() -> dict[str, DetectedCheckpoint]:
    heads = {"num_heads": TINY.num_heads, "sample_size": TINY.sample_size}
    controlnet = ControlNetTransformer(ControlNetConfig.for_base(TINY, copies=1), device="meta")
    with torch.device("meta"):
        vae = AutoencoderKL(**VaeConfig(block_out_channels=(8, 16), norm_num_groups=4).diffusers_kwargs())
    return {
        "transformer": detect_transformer(_meta_state(PixArtTransformer(TINY, device="meta")), heads),
        "controlnet": detect_controlnet(_meta_state(controlnet), base=TINY),
        "t5": detect_t5(_meta_state(build_t5(SMALL_T5, torch.float32), drop=tuple(TIED))),
        "vae": detect_vae(_meta_state(vae), {"norm_num_groups": 4}),
    }


def test_every_detector_returns_the_one_generic_type() -> None:
    found = _detections()
    kinds = {
        "transformer": (TransformerConfig, TransformerLayout.REFERENCE),
        "controlnet": (ControlNetConfig, ControlNetLayout.REFERENCE),
        "t5": (T5EncoderConfig, T5Layout.TRANSFORMERS),
        "vae": (VaeConfig, VaeLayout.DIFFUSERS),
    }
    for name, (config_type, layout) in kinds.items():
        detected = found[name]
        assert type(detected) is DetectedCheckpoint, name
        assert isinstance(detected.config, config_type) and detected.layout is layout, name
        assert detected.prefix == "" and detected.expect(config_type) is detected, name
        assert detected.describe().startswith(f"{layout.value} layout: {detected.config.describe()}"), name
    assert found["t5"].config == SMALL_T5
    stored = PixArtTransformer(TINY, device="meta").state_dict().values()
    assert found["transformer"].parameters == sum(v.numel() for v in stored)


def test_a_detection_of_another_model_is_refused_by_a_loader() -> None:
    vae = _detections()["vae"]
    with pytest.raises(
        InputError, match="expected a detected checkpoint of a TransformerConfig, found one of a VaeConfig"
    ):
        vae.expect(TransformerConfig)
    with pytest.raises(InputError, match="found one of a VaeConfig"):
        load_transformer(vae, device="meta")
