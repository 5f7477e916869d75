"""The command line: demo, generate and info, as users call them."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pixart_delta_core.cli import main
from pixart_delta_core.demo import showcase
from pixart_delta_core.demo.embedded_files import FOLDER
from pixart_delta_core.demo.files import write_demo_models
from pixart_delta_core.demo.showcase import from_here, next_steps
from pixart_delta_core.world.render import render
from pixart_delta_core.world.scenes import sample_scene
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_demo_models(tmp_path_factory.mktemp("models"))


def test_demo_draws_held_out_prompts_judges_them_and_says_what_to_try(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo.png"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    grid = Image.open(out)  # 6 prompts, the edge map, the ControlNet's picture; captions (their own test) below
    assert grid.width == 256 * 8 and grid.height > 256 + 4 * 12
    printed = capsys.readouterr().out
    assert printed.count("[LCM, 4 steps] ") == 6 and "[ControlNet, LCM 4 steps] " in printed
    assert printed.count("  judge: ") == 7 and "[edge map] " in printed  # the input is shown, not judged
    assert "  the ControlNet's input (not judged)" in printed
    assert printed.count("  judge: PASS (everything as asked)") + printed.count("  judge: FAIL (") == 7
    assert "\n  overlap of the shapes with the edge map's (IoU): " in printed
    next_commands = printed.split("Next:")[1]
    assert "info shapes-teacher shapes-lcm shapes-controlnet shapes-taesd shapes-t5" in next_commands
    assert f"judge {tmp_path / 'star.png'}" in next_commands  # beside the grid
    assert f"--control-image {tmp_path / 'scene-edges.png'} " in next_commands
    assert next_commands.rstrip().endswith(f"judge {tmp_path / 'steered.png'} --overlap")


def test_the_demo_prints_paths_that_work_from_the_users_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(showcase, "write_demo", lambda out, device, seed: [])  # what it prints after drawing, only
    grid = tmp_path / "checkout" / "outputs" / "demo.png"
    (tmp_path / "elsewhere").mkdir()
    grid.parent.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere")  # not under the grid's folder: absolute paths
    assert main(["demo", "--out", str(grid)]) == 0
    printed = capsys.readouterr().out
    assert f"\nwrote {grid}. " in printed and f"judge {grid.parent / 'star.png'}\n" in printed
    assert f"  {sys.executable} -m pixart_delta_core info shapes-teacher" in printed  # the one with the pack
    assert f"model card: {FOLDER / 'MODEL_CARD.md'}" in printed
    monkeypatch.chdir(tmp_path / "checkout")  # under it: relative to here
    assert main(["demo", "--out", str(grid)]) == 0
    printed = capsys.readouterr().out
    assert "\nwrote outputs/demo.png. " in printed and "judge outputs/star.png\n" in printed


def test_the_demo_says_it_replaced_a_grid_and_refuses_before_its_introduction(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(showcase, "write_demo", lambda out, device, seed: [])  # what it prints after drawing, only
    grid = tmp_path / "demo.png"
    grid.write_bytes(b"an earlier grid")
    assert main(["demo", "--out", str(grid)]) == 0
    assert f"\nwrote {grid} (replaced an earlier file). " in capsys.readouterr().out
    assert main(["demo", "--out", str(tmp_path / "demo.txt")]) == 1
    printed = capsys.readouterr()
    assert printed.out == "" and ".txt is not an image format" in printed.err


def test_the_demo_draws_from_the_seed_given(tmp_path: Path, monkeypatch, capsys) -> None:
    drawn = []
    monkeypatch.setattr(showcase, "run_demo", lambda seed, device: drawn.append(seed) or [])
    monkeypatch.setattr(showcase, "demo_grid", lambda shown: Image.new("RGB", (8, 8)))
    assert main(["demo", "--out", str(tmp_path / "demo.png"), "--seed", "7"]) == 0
    assert main(["demo", "--out", str(tmp_path / "demo.png")]) == 0
    assert drawn == [7, 0]
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path / "demo.png"), "--seed", "-1"])
    assert "--seed: expected a whole number (0 to 18446744073709551615), found -1" in capsys.readouterr().err


def test_paths_are_shown_relative_under_the_current_folder_else_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert from_here(tmp_path / "a" / "b.png") == str(Path("a", "b.png")) == from_here("a/b.png")
    assert from_here(tmp_path.parent / "c.png") == str(tmp_path.parent / "c.png")
    assert from_here("../c.png") == str(tmp_path.parent / "c.png")


def test_the_demos_next_generate_command_runs(capsys, tmp_path) -> None:
    # The command the demo prints, fewer steps (a 128 px model has no aspect-ratio bins: drawn as asked).
    command = [
        "generate", "--transformer", "shapes-teacher", "--t5", "shapes-t5", "--vae", "shapes-taesd",
        "--prompt", "a large red star in the center, on a white background", "--sampler", "dpm_solver++",
        "--steps", "4", "--out", str(tmp_path / "star.png"),
    ]  # fmt: skip
    assert main(command) == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "star.png").size == (128, 128)


def _commands(lines: list[str]) -> list[list[str]]:
    """The pack's commands in shell ``lines`` (a trailing backslash continues a line), each as its arguments after
    ``-m pixart_delta_core``."""
    joined = "\n".join(lines).replace("\\\n", " ").splitlines()
    words = [shlex.split(line) for line in joined if "-m pixart_delta_core" in line]
    return [argv[argv.index("pixart_delta_core") + 1 :] for argv in words]


def test_the_controlnet_commands_of_the_readme_and_the_demo_run(tmp_path: Path, monkeypatch, capsys) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("# Its ControlNet:")[1].split("```")[0]
    demo = next_steps(tmp_path / "demo.png")
    scene = next(i for i, line in enumerate(demo) if " scene --caption " in line)  # the ControlNet's, after it
    monkeypatch.chdir(tmp_path)  # the README's files are named from the current folder
    for commands in (_commands(readme.splitlines()), _commands(demo[scene:])):
        assert [argv[0] for argv in commands] == ["scene", "generate", "judge"]
        for argv in commands:
            assert main(argv) == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        assert "; overlap of the shapes with the scene's (IoU): " in printed


def test_the_embedded_models_are_taken_by_name(capsys) -> None:
    assert main(["info", "shapes-teacher", "shapes-lcm", "shapes-controlnet", "shapes-taesd", "shapes-t5"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("PixArt transformer") == 2 and "PixArt ControlNet" in printed
    assert "TAESD" in printed and "T5 text encoder" in printed
    # by their files' names too, as ComfyUI lists them
    assert main(["info", "shapes-edges", "shapes-edges.safetensors", "shapes-lcm.safetensors"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("PixArt ControlNet") == 2 and printed.count("PixArt transformer") == 1


def test_a_bare_name_of_no_file_lists_the_embedded_models(files, capsys, monkeypatch) -> None:
    assert main(["info", "shapes-lcmm"]) == 1
    listed = "the pack's embedded models are: shapes-controlnet, shapes-lcm, shapes-t5, shapes-taesd, shapes-teacher"
    assert capsys.readouterr().err == f"error: shapes-lcmm: no such file or folder; {listed}\n"
    monkeypatch.chdir(files.transformer.parent)  # a bare name of a file here is that file
    assert main(["info", files.transformer.name]) == 0
    assert "PixArt transformer" in capsys.readouterr().out


def test_generate_writes_one_file_per_image_named_for_its_prompt(files, tmp_path: Path) -> None:
    args = ["generate", "--transformer", str(files.transformer), "--t5", str(files.t5), "--vae", str(files.vae)]
    args += ["--tokenizer", str(files.tokenizer), "--prompt", "a fox", "--prompt", "a cat", "--batch", "2"]
    args += ["--width", "96", "--height", "64", "--no-binning", "--out", str(tmp_path / "x.png")]
    assert main(args) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["x-p1-1.png", "x-p1-2.png", "x-p2-1.png", "x-p2-2.png"]
    assert Image.open(tmp_path / "x-p2-2.png").size == (96, 64)
    parameters = Image.open(tmp_path / "x-p2-1.png").text["parameters"]
    assert parameters.startswith("a cat\nSteps: 4, Sampler: lcm, CFG scale: 0.0, Seed: 0, Size: 96x64, ")
    assert f"Model: {files.transformer.name}, T5: {files.t5.name}, VAE: {files.vae.name}" in parameters


def test_info_says_what_each_file_is(files, capsys) -> None:
    assert main(["info", str(files.transformer), str(files.t5), str(files.vae)]) == 0
    out = capsys.readouterr().out
    assert "PixArt transformer, reference layout" in out
    assert "T5 text encoder" in out
    assert "VAE, diffusers layout" in out


def test_info_tells_every_file_it_can_and_names_each_it_cannot(files, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "missing.safetensors"
    assert main(["info", str(files.transformer), str(missing), str(files.vae)]) == 1
    printed = capsys.readouterr()
    assert "PixArt transformer, reference layout" in printed.out and "VAE, diffusers layout" in printed.out
    assert f"error: {missing}: no such file" in printed.err
    assert printed.err.rstrip().endswith("error: 1 of 3 files could not be read")


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


@pytest.mark.parametrize("command", ["info", "judge"])
def test_output_into_a_reader_that_closed_early_ends_quietly(command: str, tmp_path: Path) -> None:
    """``... | head -1``: a closed pipe ends the run with a shell's SIGPIPE status, 141, and no traceback."""
    argv = ["info", "shapes-lcm"]
    if command == "judge":
        render(sample_scene(5)).save(tmp_path / "s.png")
        argv = ["judge", str(tmp_path / "s.png"), "--prompt", sample_scene(5).caption()]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: every write meets a broken pipe
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pixart_delta_core", *argv], stdout=write_end, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write_end)
    assert run.stderr == "" and run.returncode == 141


def test_a_demo_refused_leaves_no_folder_behind(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # run from another folder, with the default --out outputs/demo.png
    assert main(["demo", "--device", "cuda:99"]) == 1
    assert "error: --device: device 'cuda:99'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no outputs/ made before the device was refused
