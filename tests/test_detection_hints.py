"""What detection cannot read from the weights is reachable from every surface, and its error says how.

The released PixArt-Σ 256 px checkpoint is the case: no ``pos_embed``, no micro-conditions, so its
training resolution is not in the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import save_file

from pixart_delta_core.cli import build_parser
from pixart_delta_core.errors import CheckpointError
from pixart_delta_core.models.transformer import PixArtTransformer, inspect_transformer
from pixart_delta_core.models.transformer_config import TransformerConfig
from pixart_delta_core.pipeline.cli import LATENT_PIXEL, detection_hints
from pixart_delta_core.pipeline.generation import PixArtPipeline
from pixart_delta_core.vae.vae_config import SD_VAE, SDXL_VAE
from tests.comfy_helpers import ENGINE, PACK, call_node

SIGMA_256 = TransformerConfig(
    depth=2, hidden_size=144, num_heads=2, mlp_hidden=192, caption_channels=32, caption_length=300, sample_size=32
)


@pytest.fixture
def models(tmp_path: Path, monkeypatch) -> Path:
    """ComfyUI's models/ with a Σ 256 px-like reference file, saved without its pos_embed as released."""
    weights = PixArtTransformer(SIGMA_256).state_dict()  # no pos_embed: it is a buffer of the reference only
    (tmp_path / "checkpoints").mkdir()
    save_file(weights, str(tmp_path / "checkpoints" / "sigma-256.safetensors"))
    monkeypatch.setenv(PACK.nodes.host.MODELS_ENV, str(tmp_path))
    return tmp_path


def test_the_error_names_the_option_and_the_widget(models: Path) -> None:
    with pytest.raises(
        CheckpointError,
        match=r"--training-resolution PX or --sample-size PX/8 on the command line.*training_resolution",
    ):
        inspect_transformer(models / "checkpoints" / "sigma-256.safetensors")


def test_the_command_line_gives_the_hints_to_the_pipeline(models: Path) -> None:
    argv = ["generate", "--transformer", "t", "--t5", "a", "--vae", "v", "--prompt", "x"]
    args = build_parser().parse_args([*argv, "--training-resolution", "256", "--heads", "2"])
    assert detection_hints(args) == {"sample_size": 32, "num_heads": 2}
    assert detection_hints(build_parser().parse_args(argv)) == {}
    assert detection_hints(build_parser().parse_args([*argv, "--sample-size", "32", "--caption-length", "300"])) == {
        "sample_size": 32,
        "caption_length": 300,
    }
    pipeline = PixArtPipeline(models / "checkpoints" / "sigma-256.safetensors", "a", "v", hints=detection_hints(args))
    config = pipeline.transformer_checkpoint.config
    assert (config.sample_size, config.caption_length, config.interpolation_scale) == (32, 300, 0.5)


def test_a_training_resolution_is_a_whole_number_of_latent_pixels_on_every_surface() -> None:
    """1001 px is no sample size (1001 // 8 = 125 would pass for 1000): the command line refuses it; the node's
    widget offers only sizes the command line takes, as the same sample size."""
    assert LATENT_PIXEL == SD_VAE.downscale == SDXL_VAE.downscale
    argv = ["generate", "--transformer", "t", "--t5", "a", "--vae", "v", "--prompt", "x", "--training-resolution"]
    assert detection_hints(build_parser().parse_args([*argv, "1000"])) == {"sample_size": 125}
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "1001"])
    choices, hint, to_hint = PACK.nodes.loaders.HINT_WIDGETS["training_resolution"]
    for pixels in choices:
        assert to_hint(int(pixels)) == detection_hints(build_parser().parse_args([*argv, pixels]))[hint]


def test_the_checkpoint_node_offers_the_hint_and_recognises_its_file_once(models: Path, monkeypatch) -> None:
    loader = PACK.NODE_CLASS_MAPPINGS["PixArtDeltaCheckpointLoader"]
    optional = loader.INPUT_TYPES()["optional"]
    assert optional["training_resolution"][0][0] == "auto" and optional["training_resolution"][1]["default"] == "auto"
    with pytest.raises(ENGINE.errors.CheckpointError, match="training_resolution in ComfyUI"):
        call_node(loader, ckpt_name="sigma-256.safetensors")
    module = ENGINE.models.transformer
    calls = []
    detect = module.detect_transformer
    monkeypatch.setattr(module, "detect_transformer", lambda *a: calls.append(a) or detect(*a))
    model, _ = call_node(loader, ckpt_name="sigma-256.safetensors", training_resolution="256")
    assert model.transformer.config.sample_size == 32
    assert len(calls) == 1
