"""generate --lora refuses what is no LoRA by what it is: an embedded model's name says which model it is (as
--transformer shapes-taesd does), and a model file (none of its tensors an adapter's) says the kind ``info`` reads
in it and the option that takes it, instead of listing every tensor as landing on no module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pixart_delta_core.cli import main
from pixart_delta_core.demo.embedded_files import embedded_path

EMBEDDED = ["--transformer", "shapes-lcm", "--t5", "shapes-t5", "--vae", "shapes-taesd", "--device", "cpu"]


def refused(tmp_path: Path, lora: str, capsys) -> str:
    argv = ["generate", *EMBEDDED, "--prompt", "a small red circle at the top", "--out", str(tmp_path / "x.png")]
    assert main([*argv, "--lora", lora]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize(
    ("name", "said"),
    [
        (
            "shapes-lcm",
            "shapes-lcm is the pack's embedded transformer, not a LoRA: give it as --transformer shapes-lcm",
        ),
        ("shapes-taesd", "shapes-taesd is the pack's embedded VAE, not a LoRA: give it as --vae shapes-taesd"),
        (
            "shapes-edges",  # its file's name, as ComfyUI lists it
            "no such file or folder; shapes-edges is the pack's embedded ControlNet, not a LoRA: give it as "
            "--controlnet shapes-controlnet",
        ),
    ],
)
def test_an_embedded_models_name_says_which_model_it_is(tmp_path: Path, capsys, name: str, said: str) -> None:
    assert refused(tmp_path, name, capsys) == f"error: --lora {name}: {said}"


@pytest.mark.parametrize(
    ("model", "what", "option"),
    [
        ("shapes-taesd", "VAE (ComfyUI single-file TAESD layout", "--vae"),
        ("shapes-lcm", "PixArt transformer (reference layout", "--transformer"),
        ("shapes-t5", "T5 text encoder (transformers layout", "--t5"),
    ],
)
def test_a_model_file_says_what_it_is(tmp_path: Path, capsys, model: str, what: str, option: str) -> None:
    path = embedded_path(model)
    err = refused(tmp_path, str(path), capsys)
    assert err.startswith(f"error: --lora {path}: expected a LoRA, found no adapter tensor in it: it is a {what}")
    assert err.endswith(f"; give it as {option}")
    assert "land on no module" not in err


def test_a_file_of_no_kind_is_still_read_as_a_lora(tmp_path: Path, capsys) -> None:
    save_file({"something.weight": torch.zeros(2, 2)}, tmp_path / "odd.safetensors")
    err = refused(tmp_path, str(tmp_path / "odd.safetensors"), capsys)
    assert "1 of its 1 tensors land on no module of a PixArt transformer: something.weight" in err
