"""What a second fresh-user review of the command line found: Ctrl-C, the help's defaults, options a sampler or the
steps make void, and errors that name the option typed. Each is answered in one line before any model loads."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from pixart_delta_core import cli
from pixart_delta_core.cli import main, warn_outside_the_world
from pixart_delta_core.demo.embedded_files import embedded_path
from pixart_delta_core.demo.files import write_demo_models
from pixart_delta_core.pipeline.generation import PixArtPipeline

EMBEDDED = ["--transformer", "shapes-lcm", "--t5", "shapes-t5", "--vae", "shapes-taesd", "--device", "cpu"]
A_FILE = "--transformer", "a", "--t5", "b", "--vae", "c", "--prompt", "x"  # argparse refuses before they are read


def generate(tmp_path: Path, *extra: str) -> list[str]:
    return ["generate", *EMBEDDED, "--prompt", "a fox", "--out", str(tmp_path / "x.png"), *extra]


def refused(argv: list[str], capsys) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err.strip()


def refused_by_argparse(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture
def hed(tmp_path: Path) -> Path:
    Image.new("RGB", (128, 128)).save(tmp_path / "hed.png")
    return tmp_path / "hed.png"


# --- 1. Ctrl-C --------------------------------------------------------------------------------------


def test_ctrl_c_says_interrupted_in_one_line_and_exits_130(monkeypatch, capsys) -> None:
    def interrupted(args) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_info", interrupted)
    assert main(["info", "x.safetensors"]) == 130  # 128 + SIGINT, what a shell reports for a process Ctrl-C ended
    assert capsys.readouterr().err == "interrupted\n"


# --- 6. a long prompt outside the world, shortened in the warning --------------------------------------


def test_a_long_prompt_outside_the_world_is_shortened_in_the_warning(caplog) -> None:
    long = "a photograph of a purple elephant riding a red bicycle along a beach at sunset, highly detailed"
    with caplog.at_level(logging.WARNING):
        warn_outside_the_world(embedded_path("shapes-lcm"), [long, "a fox"])
    message = caplog.records[0].getMessage()
    assert f"the prompts {long[:60]!r}…, 'a fox' are outside its grammar" in message
    assert long not in message


# --- 7. the negative prompts made a list once ----------------------------------------------------------


class Encoded(Exception):
    """What the pipeline hands the text encoder, raised to stop the run there."""


@pytest.mark.parametrize(
    ("negative", "encoded"),
    [
        ("blurry", ["blurry", "blurry"]),
        (["blurry", "dark"], ["blurry", "dark"]),
        (iter(["blurry", "dark"]), ["blurry", "dark"]),  # read once: a second list() of it would be empty
    ],
    ids=["text", "list", "iterator"],
)
def test_the_negative_prompts_reach_the_encoder_one_per_prompt(
    tmp_path: Path, monkeypatch, negative: object, encoded: list[str]
) -> None:
    files = write_demo_models(tmp_path)

    def encode(self, prompts, negatives, *args):
        raise Encoded(negatives)

    monkeypatch.setattr(PixArtPipeline, "encode_prompts", encode)
    pipeline = PixArtPipeline(files.transformer, files.t5, files.vae, files.tokenizer, device="cpu")
    with pytest.raises(Encoded) as caught:
        pipeline(["a fox", "an owl"], negative_prompt=negative, sampler="dpm_solver++", steps=2)
    assert caught.value.args[0] == encoded
