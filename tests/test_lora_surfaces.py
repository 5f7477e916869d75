"""LoRAs from the command line (``--lora FILE[:STRENGTH]``) and the Python API (``PixArtPipeline(loras=...)``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pixart_delta_core.cli import main
from pixart_delta_core.demo.files import DEMO_TRANSFORMER, write_demo_models
from pixart_delta_core.errors import CheckpointError
from pixart_delta_core.models.controlnet import ControlNetTransformer
from pixart_delta_core.models.transformer import load_transformer
from pixart_delta_core.pipeline.cli import lora_spec
from pixart_delta_core.pipeline.generation import PixArtPipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def lora_file(path: Path, width: int, scale: float = 0.5) -> Path:
    """A kohya-layout LoRA on every block's self-attention output and feed-forward of a ``width``-wide PixArt."""
    g = torch.Generator().manual_seed(1)
    weights = {}
    for i in range(DEMO_TRANSFORMER.depth):
        for name, n_in, n_out in (("attn_proj", width, width), ("mlp_fc2", 4 * width, width)):
            weights[f"lora_unet_blocks_{i}_{name}.lora_down.weight"] = torch.randn(4, n_in, generator=g) * scale
            weights[f"lora_unet_blocks_{i}_{name}.lora_up.weight"] = torch.randn(n_out, 4, generator=g) * scale
            weights[f"lora_unet_blocks_{i}_{name}.alpha"] = torch.tensor(4.0)
    save_file(weights, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return write_demo_models(folder), lora_file(folder / "style.safetensors", DEMO_TRANSFORMER.hidden_size)


@pytest.mark.parametrize(
    ("text", "path", "strength"),
    [("a.safetensors", "a.safetensors", 1.0), ("a.safetensors:0.5", "a.safetensors", 0.5),
     ("x/b.pt:-1", "x/b.pt", -1.0), ("C:\\loras\\c.safetensors", "C:\\loras\\c.safetensors", 1.0),
     ("C:\\loras\\c.safetensors:2", "C:\\loras\\c.safetensors", 2.0)],
)  # fmt: skip
def test_lora_arguments_parse_with_and_without_a_strength(text: str, path: str, strength: float) -> None:
    assert lora_spec(text) == (Path(path), strength)
    for bad in ("a.safetensors:nan", "a.safetensors:abc", "a.safetensors:", "a.safetensors:1_0", "a:1e400"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"strength after the last colon should be a number"):
            lora_spec(bad)


def test_a_lora_file_whose_name_holds_a_colon_is_a_file(tmp_path: Path) -> None:
    named = tmp_path / "style:v2"
    named.write_bytes(b"")
    assert lora_spec(str(named)) == (named, 1.0)
    assert lora_spec(f"{named}:0.5") == (named, 0.5)


def _generate(files, tmp_path: Path, name: str, *extra: str) -> np.ndarray:
    demo, _ = files
    args = ["generate", "--transformer", str(demo.transformer), "--t5", str(demo.t5), "--vae", str(demo.vae)]
    args += ["--tokenizer", str(demo.tokenizer), "--prompt", "a fox", "--width", "64", "--height", "64"]
    args += ["--no-binning", "--steps", "2", "--out", str(tmp_path / name), *extra]
    assert main(args) == 0
    return np.asarray(Image.open(tmp_path / name), dtype=np.int16)


def test_the_command_line_applies_stacked_loras(files, tmp_path: Path) -> None:
    _, lora = files
    plain = _generate(files, tmp_path, "plain.png")
    zero = _generate(files, tmp_path, "zero.png", "--lora", f"{lora}:0")
    styled = _generate(files, tmp_path, "styled.png", "--lora", f"{lora}:0.5", "--lora", f"{lora}:0.5")
    once = _generate(files, tmp_path, "once.png", "--lora", str(lora))
    assert np.array_equal(plain, zero)
    assert np.abs(styled - plain).max() > 10  # the LoRA changes the image...
    assert np.abs(styled - once).max() <= 1  # ...and two halves stacked are one whole LoRA (8-bit rounding)


def test_a_lora_of_another_width_is_refused_before_any_model_loads(files, tmp_path: Path, capsys) -> None:
    demo, _ = files
    wrong = lora_file(tmp_path / "wide.safetensors", 2 * DEMO_TRANSFORMER.hidden_size)
    pipeline = PixArtPipeline(demo.transformer, demo.t5, demo.vae, demo.tokenizer, loras=[(wrong, 1.0)])
    stages = []
    with pytest.raises(CheckpointError, match="another width"):
        pipeline("a fox", width=64, height=64, resolution_binning=False, on_stage=stages.append)
    assert stages == []  # refused before the text encoder loaded
    args = ["generate", "--transformer", str(demo.transformer), "--t5", str(demo.t5), "--vae", str(demo.vae)]
    args += ["--tokenizer", str(demo.tokenizer)]  # the CLI checks its tokenizer before the models
    assert main([*args, "--prompt", "x", "--lora", f"{wrong}:1", "--out", str(tmp_path / "n.png")]) == 1
    assert "another width" in capsys.readouterr().err


@pytest.mark.parametrize("to_controlnet", [True, False])
def test_the_pipeline_gives_the_controlnet_copies_the_lora_when_asked(files, tmp_path: Path, to_controlnet) -> None:
    demo, lora = files
    base = load_transformer(demo.transformer)
    net_file = tmp_path / "controlnet.safetensors"
    save_file(ControlNetTransformer.from_base(base, copies=1).state_dict(), str(net_file))
    pipeline = PixArtPipeline(
        demo.transformer, demo.t5, demo.vae, demo.tokenizer, controlnet=net_file, device="cpu", dtype="fp32",
        loras=[(lora, 0.7)], lora_controlnet=to_controlnet,
    )  # fmt: skip
    transformer = pipeline.load_transformer()
    copy = pipeline.load_controlnet(transformer).controlnet[0].copied_block.attn.proj.weight
    assert not torch.equal(transformer.blocks[0].attn.proj.weight, base.blocks[0].attn.proj.weight)
    assert torch.equal(copy, (transformer if to_controlnet else base).blocks[0].attn.proj.weight)
