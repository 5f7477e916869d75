"""The package's public API: every exported name resolves, lazily (lightness: tests/test_light_import.py)."""

from __future__ import annotations

import pytest

import pixart_delta_core


@pytest.mark.parametrize("name", pixart_delta_core.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    value = getattr(pixart_delta_core, name)
    assert value is not None
    assert getattr(value, "__name__", name) == name, f"{name} resolves to {value!r}"
    assert name in dir(pixart_delta_core)


def test_main_entry_points_are_exported() -> None:
    wanted = {"PixArtPipeline", "generate", "Control", "load_transformer", "load_controlnet", "load_text_encoder"}
    wanted |= {"load_vae", "inspect_transformer", "SamplingSettings", "Sampler", "Quantization", "open_checkpoint"}
    wanted |= {"CheckpointError", "InputError"}
    assert wanted <= set(pixart_delta_core.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'load_everything'"):
        pixart_delta_core.load_everything  # noqa: B018
