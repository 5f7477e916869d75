"""The command line: demo, generate and info, as users call them."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pixart_delta_core.cli import main
from pixart_delta_core.demo.files import write_demo_models


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_demo_models(tmp_path_factory.mktemp("models"))


def test_demo_writes_an_image(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo.png"
    assert main(["demo", "--out", str(out)]) == 0
    assert Image.open(out).size == (512, 512)
    assert "random" in capsys.readouterr().out


def test_generate_writes_one_file_per_image(files, tmp_path: Path) -> None:
    args = ["generate", "--transformer", str(files.transformer), "--t5", str(files.t5), "--vae", str(files.vae)]
    args += ["--tokenizer", str(files.tokenizer), "--prompt", "a fox", "--prompt", "a cat", "--batch", "2"]
    args += ["--width", "96", "--height", "64", "--no-binning", "--out", str(tmp_path / "x.png")]
    assert main(args) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["x-0.png", "x-1.png", "x-2.png", "x-3.png"]
    assert Image.open(tmp_path / "x-3.png").size == (96, 64)


def test_info_says_what_each_file_is(files, capsys) -> None:
    assert main(["info", str(files.transformer), str(files.t5), str(files.vae)]) == 0
    out = capsys.readouterr().out
    assert "PixArt transformer, reference layout" in out
    assert "T5 text encoder" in out
    assert "VAE, diffusers layout" in out


def test_errors_are_one_clear_line_and_exit_code_1(files, tmp_path: Path, capsys) -> None:
    args = ["generate", "--transformer", str(files.vae), "--t5", str(files.t5), "--vae", str(files.vae)]
    assert main([*args, "--tokenizer", str(files.tokenizer), "--prompt", "x", "--out", str(tmp_path / "y.png")]) == 1
    assert "error:" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.safetensors")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_bad_argument_values_stop_the_parser(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--transformer", "a", "--t5", "b", "--vae", "c", "--prompt", "x", "--width", "-5"])
    assert exit_info.value.code == 2
    assert "positive whole number" in capsys.readouterr().err
