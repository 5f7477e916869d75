"""Written images say where they came from: names per prompt, parameters in the PNG text chunk."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pixart_delta_core.pipeline.outputs import RunRecord, output_paths, save_images

RECORD = RunRecord(
    prompts=["a fox", "a cat"],
    negative_prompt="blurry",
    seed=7,
    steps=14,
    sampler="dpm_solver++",
    guidance=4.5,
    size=(32, 48),
    models={"Model": "PixArt-XL-2-1024-MS.pth", "T5": "t5xxl_fp16.safetensors", "VAE": "sd-vae"},
)


def test_names_say_which_prompt_and_which_image() -> None:
    assert output_paths(Path("o/x.png"), 1, 1) == [Path("o/x.png")]
    assert output_paths(Path("o/x.png"), 1, 2) == [Path("o/x-p0-0.png"), Path("o/x-p0-1.png")]
    assert [p.name for p in output_paths(Path("x.webp"), 2, 1)] == ["x-p0-0.webp", "x-p1-0.webp"]


def test_pngs_carry_the_parameters_other_formats_are_written_plainly(tmp_path: Path) -> None:
    images = [Image.new("RGB", (48, 32), c) for c in ("red", "green", "blue", "white")]
    paths = save_images(images, tmp_path / "x.png", RECORD)
    assert [p.name for p in paths] == ["x-p0-0.png", "x-p0-1.png", "x-p1-0.png", "x-p1-1.png"]
    text = Image.open(paths[3]).text["parameters"]
    assert text == (
        "a cat\nNegative prompt: blurry\nSteps: 14, Sampler: dpm_solver++, CFG scale: 4.5, Seed: 7, Size: 48x32, "
        "Batch index: 1, Model: PixArt-XL-2-1024-MS.pth, T5: t5xxl_fp16.safetensors, VAE: sd-vae"
    )
    (jpeg,) = save_images(images[:1], tmp_path / "y.jpg", RunRecord(["a fox"], None, 0, 4, "lcm", 0.0, (32, 48), {}))
    assert Image.open(jpeg).size == (48, 32)
