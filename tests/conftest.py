"""Fixtures shared by several test modules: the node tests' models, the command-line checks' guard."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.comfy_helpers import PACK, write_models
from tests.helpers import TOKENIZER, Encoded


@pytest.fixture(scope="session")
def node_models(tmp_path_factory) -> Path:
    """ComfyUI's models/ folder with tiny random models in the real layouts and file names."""
    root = tmp_path_factory.mktemp("models")
    write_models(root, tokenizer=TOKENIZER)
    return root


@pytest.fixture
def in_models(node_models: Path, monkeypatch) -> Path:
    """The node tests' models, where the pack looks for them outside ComfyUI."""
    monkeypatch.setenv(PACK.nodes.host.MODELS_ENV, str(node_models))
    return node_models


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module that asks, and the previous count back after it.

    The node tests' models and the VAE tests' convolutions are tiny: on shared, busy cores one thread runs
    them many times faster than two (the convolutions about 30x).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def nothing_loads(monkeypatch):
    """Any model load fails the test: the checks must have stopped the run before."""
    from pixart_delta_core.pipeline import generation

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the checks finished")

    for name in ("load_text_encoder", "load_transformer", "load_vae", "load_controlnet"):
        monkeypatch.setattr(generation, name, refuse)


@pytest.fixture
def stop_at_encoding(monkeypatch) -> None:
    """A run raises ``Encoded`` where it would encode its prompts."""
    from pixart_delta_core.pipeline.generation import PixArtPipeline

    def encode(self, *args, **kwargs):
        raise Encoded

    monkeypatch.setattr(PixArtPipeline, "encode_prompts", encode)
