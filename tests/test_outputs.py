"""Written images say where they came from (names per prompt, parameters in the PNG text chunk); an output that
cannot be written is refused before any work."""

from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from pixart_delta_core.cli import main
from pixart_delta_core.demo import showcase
from pixart_delta_core.errors import InputError
from pixart_delta_core.pipeline.outputs import RunRecord, check_output, free_output, output_paths, save_images

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
    assert output_paths(Path("o/x.png"), 1, 2) == [Path("o/x-p1-1.png"), Path("o/x-p1-2.png")]
    assert [p.name for p in output_paths(Path("x.webp"), 2, 1)] == ["x-p1-1.webp", "x-p2-1.webp"]


def test_pngs_carry_the_parameters_other_formats_are_written_plainly(tmp_path: Path) -> None:
    images = [Image.new("RGB", (48, 32), c) for c in ("red", "green", "blue", "white")]
    paths = [written.path for written in save_images(images, tmp_path / "x.png", RECORD)]
    assert [p.name for p in paths] == ["x-p1-1.png", "x-p1-2.png", "x-p2-1.png", "x-p2-2.png"]
    text = Image.open(paths[3]).text["parameters"]
    assert text == (
        "a cat\nNegative prompt: blurry\nSteps: 14, Sampler: dpm_solver++, CFG scale: 4.5, Seed: 7, Size: 48x32, "
        "Batch index: 1, Model: PixArt-XL-2-1024-MS.pth, T5: t5xxl_fp16.safetensors, VAE: sd-vae"
    )
    ((jpeg, _),) = save_images(
        images[:1], tmp_path / "y.jpg", RunRecord(["a fox"], None, 0, 4, "lcm", 0.0, (32, 48), {})
    )
    assert Image.open(jpeg).size == (48, 32)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a" * 300 + ".png", r"cannot be written \(File name too long\)"),
        ("x.txt", r"\.txt is not an image format"),
        ("", "is a folder: give a file name"),
    ],
)
def test_an_output_that_cannot_be_written_is_our_error(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_output(tmp_path / name)


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null here")
def test_an_output_on_or_under_what_is_no_folder_names_its_kind(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    cases = [
        (Path("/dev/null"), "output /dev/null: expected an image file to write, found a character device"),
        (Path("/dev/null/x.png"), "output /dev/null/x.png: /dev/null is a character device, not a folder"),
        (tmp_path / "afile" / "y" / "x.png", f"{tmp_path / 'afile'} is a regular file, not a folder"),
    ]
    for out, says in cases:
        with pytest.raises(InputError, match=re.escape(says)):
            check_output(out)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, where no file can be made (even by root)")
def test_a_folder_where_no_file_can_be_made_is_refused() -> None:
    with pytest.raises(InputError, match=r"output /proc/x.png cannot be written \("):
        check_output(Path("/proc/x.png"))


def test_every_name_the_images_will_take_is_tried_and_nothing_is_left(tmp_path: Path) -> None:
    longest = "a" * (255 - len(".png"))  # fits alone; x-p1-1.png of it does not
    check_output(tmp_path / f"{longest}.png")
    with pytest.raises(InputError, match=r"-p1-1\.png cannot be written \(File name too long\)"):
        check_output(tmp_path / f"{longest}.png", prompts=1, per_prompt=2)
    kept = tmp_path / "kept.png"
    kept.write_bytes(b"an older picture")
    check_output(kept)
    check_output(tmp_path / "new" / "deeper" / "x.png", prompts=2, per_prompt=2)  # its folders tried, then removed
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept.png"]
    assert kept.read_bytes() == b"an older picture"


@pytest.mark.parametrize("out", ["demo.txt", "", "a" * 300 + ".png"])
def test_the_demo_refuses_its_output_before_drawing(tmp_path: Path, monkeypatch, capsys, out: str) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the demo drew before its output was checked")

    monkeypatch.setattr(showcase, "run_demo", refuse)
    assert main(["demo", "--out", str(tmp_path / out)]) == 1
    assert capsys.readouterr().err.startswith(f"error: output {tmp_path}")


def test_the_refusal_lists_exactly_the_extensions_accepted(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\.txt is not an image format") as refused:
        check_output(tmp_path / "out.txt")
    listed = str(refused.value).split("(any case; all: ")[1].rstrip(")").split(", ")
    assert {".png", ".jpg", ".jpeg", ".gif", ".webp"} <= set(listed)
    for extension in listed:
        check_output(tmp_path / f"x{extension.upper()}")  # every one listed is accepted, in any case
    for extension in (".txt", ".json", ".safetensors", ".PNGX"):
        with pytest.raises(InputError, match="is not an image format"):
            check_output(tmp_path / f"x{extension}")


# --- earlier pictures: replaced only where the user named the file -----------------------------------------------


def test_the_free_output_is_the_first_stem_whose_every_name_is_free(tmp_path: Path) -> None:
    out = tmp_path / "pixart.png"
    assert free_output(out, 1, 1) == out
    out.write_bytes(b"")
    assert free_output(out, 1, 1) == tmp_path / "pixart-1.png"
    assert free_output(out, 2, 1) == out  # pixart-p1-1.png, pixart-p2-1.png: free
    (tmp_path / "pixart-p2-1.png").write_bytes(b"")
    (tmp_path / "pixart-1.png").mkdir()  # anything of the name is taken, a folder too
    assert free_output(out, 2, 1) == tmp_path / "pixart-1.png"  # pixart-1-p1-1.png...: free
    assert free_output(out, 1, 1) == tmp_path / "pixart-2.png"


def test_saving_says_which_files_it_replaced_and_keeps_earlier_ones_when_asked(tmp_path: Path) -> None:
    image, record = Image.new("RGB", (48, 32)), RunRecord(["a fox"], None, 0, 4, "lcm", 0.0, (32, 48), {})
    out = tmp_path / "new" / "x.png"
    assert save_images([image], out, record) == [(out, False)]  # its folder made at the save
    assert save_images([image], out, record) == [(out, True)]
    kept = out.read_bytes()
    assert save_images([image], out, record, keep_earlier=True) == [(tmp_path / "new" / "x-1.png", False)]
    assert out.read_bytes() == kept


def test_generate_without_out_replaces_no_earlier_picture(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["generate", "--transformer", "shapes-lcm", "--t5", "shapes-t5", "--vae", "shapes-taesd"]
    argv += ["--prompt", "a small red circle at the top left, on a white background", "--steps", "1"]
    argv += ["--device", "cpu"]
    for _ in range(2):
        assert main(argv) == 0
    assert main([*argv, "--out", "outputs/pixart.png"]) == 0  # named: replaced, and said
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"wrote {Path('outputs', n)}" for n in ("pixart.png", "pixart-1.png", "pixart.png")
    ]
    assert [line.endswith("; replaced an earlier file)") for line in lines] == [False, False, True]
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["pixart-1.png", "pixart.png"]


# --- the free name is claimed, not only looked at: runs at the same instant take different names ------------------


def test_a_name_taken_between_the_look_and_the_save_is_passed_over(tmp_path: Path, monkeypatch) -> None:
    """Another run writes the free name just after this one looked: this one takes the next, replacing nothing."""
    image, record = Image.new("RGB", (48, 32)), RunRecord(["a fox"], None, 0, 4, "lcm", 0.0, (32, 48), {})
    out, looked = tmp_path / "x.png", []
    lexists = os.path.lexists

    def look(path) -> bool:  # the other run's picture appears right after the first look at x.png
        free = lexists(path)
        if Path(path) == out and not looked:
            looked.append(path)
            out.write_bytes(b"the other run's picture")
        return free

    monkeypatch.setattr(os.path, "lexists", look)
    assert save_images([image], out, record, keep_earlier=True) == [(tmp_path / "x-1.png", False)]
    assert looked and out.read_bytes() == b"the other run's picture"


def test_runs_saving_at_the_same_instant_write_each_its_own_files(tmp_path: Path) -> None:
    record = RunRecord(["a fox", "a cat"], None, 0, 4, "lcm", 0.0, (32, 48), {})
    runs = 8
    start = threading.Barrier(runs)

    def run(seed: int) -> list[Path]:
        images = [Image.new("RGB", (48, 32), (seed, 0, 0)), Image.new("RGB", (48, 32), (seed, 1, 0))]
        start.wait()
        return [written.path for written in save_images(images, tmp_path / "x.png", record, keep_earlier=True)]

    with ThreadPoolExecutor(runs) as pool:
        written = list(pool.map(run, range(runs)))
    stems = sorted(paths[0].name for paths in written)
    assert stems == sorted(["x-p1-1.png", *(f"x-{n}-p1-1.png" for n in range(1, runs))])
    for seed, paths in enumerate(written):  # each run's files hold its own pictures
        assert [Image.open(p).getpixel((0, 0)) for p in paths] == [(seed, 0, 0), (seed, 1, 0)]


def test_a_save_that_fails_leaves_no_claimed_name_behind(tmp_path: Path, monkeypatch) -> None:
    images = [Image.new("RGB", (48, 32)), Image.new("RGB", (48, 32))]
    record = RunRecord(["a fox"], None, 0, 4, "lcm", 0.0, (32, 48), {})
    save = Image.Image.save
    calls = []

    def fail_second(self, fp, *args, **kwargs) -> None:
        calls.append(fp)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", fail_second)
    with pytest.raises(OSError, match="No space left"):
        save_images(images, tmp_path / "x.png", record, keep_earlier=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-p1-1.png"]  # the first, written whole
