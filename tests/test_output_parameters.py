"""The PNG ``parameters`` chunk records every setting that changed the picture, where not at its default: the init
image's denoising strength, the LCM timesteps, caption cleaning, the LoRAs, the control image and the ControlNet's
strength and window, the quantization of the transformer and T5, in the ``Key: value`` words other tools write."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from pixart_delta_core.cli import main
from pixart_delta_core.pipeline.generation import Generation, PixArtPipeline
from pixart_delta_core.pipeline.outputs import RunRecord, picture_settings, save_images
from pixart_delta_core.sampling.samplers import SamplingSettings

EMBEDDED = ["--transformer", "shapes-lcm", "--t5", "shapes-t5", "--vae", "shapes-taesd", "--device", "cpu"]
SETTINGS_LINE = "Steps: 4, Sampler: lcm, CFG scale: 0.0, Seed: 0, Size: 48x32, Batch index: 0"


def written(tmp_path: Path, settings: dict[str, str]) -> str:
    record = RunRecord(["a fox"], None, 0, 4, "lcm", 0.0, (32, 48), {}, settings)
    ((path, _),) = save_images([Image.new("RGB", (48, 32))], tmp_path / "x.png", record)
    return Image.open(path).text["parameters"]


def test_settings_at_their_defaults_write_nothing_more(tmp_path: Path) -> None:
    assert picture_settings() == {}
    assert written(tmp_path, {}) == f"a fox\n{SETTINGS_LINE}"
    at_reference = picture_settings(control=("hed.png", 1.0, 0.0, 1.0))  # the reference's strength and window
    assert at_reference == {"Control image": "hed.png"}  # the image always changes the picture


def test_the_settings_that_changed_the_picture_are_written_quoted_where_they_hold_commas(tmp_path: Path) -> None:
    settings = picture_settings(
        strength=0.75,
        lcm_timesteps="diffusers",
        clean_caption=True,
        loras=[("style.safetensors", 0.8), ("b.safetensors", -1.0)],
        lora_controlnet=True,
        control=("hed, 2.png", 0.5, 0.1, 0.9),
        quantization="int8",
        t5_quantization="nf4",
    )
    assert written(tmp_path, settings) == (
        f"a fox\n{SETTINGS_LINE}, Denoising strength: 0.75, LCM timesteps: diffusers, Clean caption: yes, "
        'Lora: "style.safetensors: 0.8, b.safetensors: -1", Lora on ControlNet: yes, Control image: "hed, 2.png", '
        "ControlNet strength: 0.5, ControlNet start: 0.1, ControlNet end: 0.9, Quantization: int8, "
        "T5 quantization: nf4"
    )


class Ran(Exception):
    """Never raised: the stand-in run returns its pictures."""


@pytest.fixture
def stand_in_run(monkeypatch) -> None:
    """The pipeline returns a grey picture at once: the command's record is what is tested, not the drawing."""

    def run(self, prompts, **options):
        steps = {} if options["steps"] is None else {"steps": options["steps"]}
        settings = SamplingSettings.defaults(options["sampler"], strength=options["strength"], **steps)
        return Generation([Image.new("RGB", (128, 128), "grey")], torch.zeros(1), (128, 128), settings)

    monkeypatch.setattr(PixArtPipeline, "__call__", run)
    monkeypatch.setattr(PixArtPipeline, "check_files", lambda self, *args: None)  # the LoRA below is no LoRA


def test_generate_records_the_strength_timesteps_cleaning_loras_control_and_quantization(
    tmp_path: Path, stand_in_run
) -> None:
    Image.new("RGB", (128, 128)).save(tmp_path / "start.png")
    (tmp_path / "style.safetensors").write_bytes(b"")
    out = tmp_path / "x.png"
    argv = [
        "generate",
        *EMBEDDED,
        "--prompt",
        "a large blue square in the center, on a black background",
        "--out",
        str(out),
        "--steps",
        "8",
    ]
    argv += ["--init-image", str(tmp_path / "start.png"), "--strength", "0.5"]
    argv += ["--lora", f"{tmp_path / 'style.safetensors'}:0.8", "--controlnet", "shapes-controlnet"]
    argv += ["--control-image", str(tmp_path / "start.png"), "--control-strength", "0.7", "--control-end", "0.9"]
    argv += ["--quantization", "int8", "--low-memory"]  # T5 in int8 with --low-memory
    argv += ["--lcm-timesteps", "diffusers", "--clean-caption"]
    assert main(argv) == 0
    settings = Image.open(out).text["parameters"].splitlines()[-1]
    assert settings.startswith("Steps: 8, Sampler: lcm, ")  # the steps asked, of which the last 4 ran
    assert settings.endswith(
        ", ControlNet: shapes-edges.safetensors, Denoising strength: 0.5, LCM timesteps: diffusers, "
        'Clean caption: yes, Lora: "style.safetensors: 0.8", Control image: start.png, ControlNet strength: 0.7, '
        "ControlNet end: 0.9, "
        "Quantization: int8, T5 quantization: int8"
    )


def test_generate_without_them_records_none(tmp_path: Path, stand_in_run) -> None:
    out = tmp_path / "x.png"
    assert (
        main(
            [
                "generate",
                *EMBEDDED,
                "--prompt",
                "a large blue square in the center, on a black background",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert Image.open(out).text["parameters"].splitlines()[-1].endswith(", VAE: shapes-taesd.safetensors")
