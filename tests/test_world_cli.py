"""The shapes world's commands: ``world`` writes a data set, ``scene`` draws a caption's scene and its edge map,
``judge`` reads pictures against their prompts (from --prompt, the PNG's parameters chunk generate writes, or the
same-name .txt) and says their overlap with a scene when asked; each refuses bad input first."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pixart_delta_core.cli import main
from pixart_delta_core.pipeline.outputs import RunRecord
from pixart_delta_core.sampling.choices import MAX_SEED
from pixart_delta_core.world.judge import foreground_iou, scene_for
from pixart_delta_core.world.render import edge_map, render
from pixart_delta_core.world.scenes import DEFAULT_CAPTION, sample_scene
from pixart_delta_core.world.scenes import MAX_SEED as WORLD_MAX_SEED
from tests.helpers import png_header


@pytest.fixture
def data_set(tmp_path: Path, capsys) -> Path:
    assert main(["world", "--out", str(tmp_path / "set"), "--count", "3", "--first-seed", "5"]) == 0
    assert "wrote 3 scenes to" in capsys.readouterr().out
    return tmp_path / "set"


def test_the_world_command_writes_the_data_set(data_set: Path) -> None:
    names = sorted(p.name for p in data_set.iterdir())
    assert names == [
        "000005.png",
        "000005.txt",
        "000006.png",
        "000006.txt",
        "000007.png",
        "000007.txt",
        "control",
        "data.jsonl",
    ]
    assert (data_set / "000006.txt").read_text(encoding="utf-8") == sample_scene(6).caption() + "\n"


@pytest.mark.parametrize(
    ("option", "says"),
    [
        (["--count", "0"], "--count: expected a positive whole number of scenes, found 0"),
        (["--count", "2.5"], "--count: expected a positive whole number of scenes, found 2.5"),
        (["--max-shapes", "10"], "--max-shapes: expected a whole number of shapes (1 to 9), found 10"),
        (["--first-seed", "-1"], f"--first-seed: expected a whole number (0 to {2**64 - 1}), found -1"),
        (["--first-seed", str(2**64)], f"--first-seed: expected a whole number (0 to {2**64 - 1}), found {2**64}"),
        (["--first-seed", str(10**300)], f"--first-seed: expected a whole number (0 to {2**64 - 1}), found 1000"),
    ],
)
def test_the_world_command_refuses_bad_options(tmp_path: Path, capsys, option: list[str], says: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["world", "--out", str(tmp_path / "set"), *option])
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "set").exists()


def test_a_data_set_whose_last_seed_is_past_the_range_is_refused_before_its_folder(tmp_path: Path, capsys) -> None:
    first = 2**64 - 2  # the first seed fits; the third scene's would not
    assert main(["world", "--out", str(tmp_path / "set"), "--count", "3", "--first-seed", str(first)]) == 1
    said = capsys.readouterr().err
    assert said == (
        f"error: --first-seed {first} with --count 3: the last scene's seed would be {2**64}, past the largest, "
        f"{2**64 - 1} (2^64 - 1): expected --first-seed at most {2**64 - 3}\n"
    )
    assert not (tmp_path / "set").exists()
    assert main(["world", "--out", str(tmp_path / "set"), "--count", "2", "--first-seed", str(first)]) == 0
    assert sorted(p.name for p in (tmp_path / "set").glob("*.png")) == [f"{2**64 - 2}.png", f"{2**64 - 1}.png"]


def test_the_worlds_seeds_span_generates() -> None:
    assert WORLD_MAX_SEED == MAX_SEED


def test_judge_reads_each_picture_against_its_txt_caption(data_set: Path, capsys) -> None:
    pictures = sorted(str(p) for p in data_set.glob("*.png"))
    assert main(["judge", *pictures]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [f"{p}: ok" for p in pictures]
    assert lines[4].split() == ["attribute", "right", "of"] and lines[5].split() == ["background", "100.0%", "3/3"]


def test_judge_names_a_caption_file_that_is_not_utf8(data_set: Path, capsys) -> None:
    picture = data_set / "000005.png"
    picture.with_suffix(".txt").write_bytes(b"\xff\xfe a caption")
    assert main(["judge", str(picture)]) == 1
    assert (
        f"{picture.with_suffix('.txt')}: expected the picture's prompt in UTF-8 text, found invalid start byte at "
        "byte 0" in capsys.readouterr().err
    )


def test_judge_takes_the_prompt_from_the_option(data_set: Path, capsys) -> None:
    picture = data_set / "000005.png"
    other = sample_scene(6).caption()
    assert main(["judge", str(picture), "--prompt", other, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"][0]["prompt"] == other
    assert report["images"][0]["reads"] == sample_scene(5).caption()
    assert report["images"][0]["verdict"] != "ok" and report["scores"]["picture"]["fraction"] == 0.0


def test_judge_takes_the_prompt_from_the_png_that_generate_wrote(tmp_path: Path, capsys) -> None:
    scene = sample_scene(11)
    record = RunRecord([scene.caption()], "blurry", 3, 4, "lcm", 1.0, (128, 128), {"Model": "tiny.safetensors"})
    info = PngInfo()
    info.add_text("parameters", record.parameters(0, 0))
    render(scene).save(tmp_path / "generated.png", pnginfo=info)
    (tmp_path / "generated.txt").write_text("a large red star in the center, on a white background", encoding="utf-8")
    assert main(["judge", str(tmp_path / "generated.png"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"][0]["prompt"] == scene.caption() and report["images"][0]["verdict"] == "ok"


def test_judge_judges_the_good_pictures_and_names_each_bad_one(data_set: Path, tmp_path: Path, capsys) -> None:
    good = str(data_set / "000005.png")
    (tmp_path / "notes.png").write_text("not a picture", encoding="utf-8")
    Image.new("RGB", (128, 128)).save(tmp_path / "bare.png")
    Image.new("RGB", (256, 128)).save(tmp_path / "wide.png")
    cases = [
        ([good, str(tmp_path / "notes.png")], "notes.png: expected a picture, found a file Pillow cannot read"),
        ([good, str(tmp_path / "missing.png")], "missing.png: expected a picture, found no such file"),
        ([good, str(tmp_path)], "expected a picture, found a folder"),
        ([good, str(tmp_path / "bare.png")], "bare.png: no prompt found (expected --prompt, a PNG parameters chunk"),
        ([good, str(tmp_path / "wide.png"), "--prompt", sample_scene(5).caption()], "wide.png: expected a square"),
    ]
    for argv, says in cases:
        assert main(["judge", *argv]) == 1
        captured = capsys.readouterr()
        assert says in captured.err and "1 of 2 pictures could not be judged" in captured.err
        assert captured.out.startswith(f"{good}: ok\n")  # the good picture is still judged
    assert main(["judge", good, good, "--prompt", "a red fox"]) == 1  # refused once, before any picture is read
    captured = capsys.readouterr()
    assert captured.err.startswith("error: --prompt: expected a prompt of the shapes world") and captured.out == ""
    assert captured.err.count("error: ") == 1
    bad = [str(tmp_path / "notes.png"), str(tmp_path / "missing.png")]
    assert main(["judge", bad[0], good, bad[1], "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert [r["image"] for r in report["images"]] == [good] and report["scores"]["picture"]["fraction"] == 1.0
    assert [e["image"] for e in report["errors"]] == bad
    assert captured.err.count("error: ") == 3 and "2 of 3 pictures could not be judged" in captured.err


def test_the_world_command_refuses_an_out_that_is_no_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    os.mkfifo(tmp_path / "fifo")
    cases = [
        (tmp_path / "file", "expected a folder, found a regular file"),
        (tmp_path / "file" / "set", f"expected a folder (its part {tmp_path / 'file'}), found a regular file"),
        (tmp_path / "fifo", "expected a folder, found a FIFO"),
        (Path("/dev/null"), "expected a folder, found a character device"),
        (Path("/proc/pixart-delta-set"), "expected a folder that can be written, found"),
    ]
    for out, says in cases:
        assert main(["world", "--out", str(out), "--count", "1"]) == 1
        captured = capsys.readouterr()
        assert f"error: --out {out}: {says}" in captured.err and captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "file"]
    with pytest.raises(SystemExit) as exit_info:
        main(["world", "--out", "", "--count", "1"])
    assert exit_info.value.code == 2
    assert "--out: expected a folder for the data set, found an empty path" in capsys.readouterr().err


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_the_world_command_refuses_a_folder_holding_a_data_set(data_set: Path, capsys) -> None:
    before = _listing(data_set)
    assert main(["world", "--out", str(data_set), "--count", "1", "--first-seed", "50"]) == 1
    says = capsys.readouterr().err
    assert f"error: --out {data_set}: already holds a data set or part of one: data.jsonl, " in says
    assert f"6 scene files ({data_set / '000005.png'}, ...), " in says
    assert f"3 edge maps ({data_set / 'control' / '000005.png'}, ...)" in says
    assert "choose another --out, or delete this folder first" in says
    assert _listing(data_set) == before


def test_the_world_command_refuses_what_an_interrupted_run_left(tmp_path: Path, monkeypatch, capsys) -> None:
    from pixart_delta_core.world import dataset

    drawn = []

    def interrupted(seed: int, max_shapes: int):
        if len(drawn) == 2:
            raise KeyboardInterrupt
        drawn.append(seed)
        return sample_scene(seed, max_shapes)

    monkeypatch.setattr(dataset, "sample_scene", interrupted)
    assert main(["world", "--out", str(tmp_path / "set"), "--count", "5"]) == 130  # Ctrl-C: "interrupted"
    assert capsys.readouterr().err == "interrupted\n"
    monkeypatch.undo()
    left = _listing(tmp_path / "set")
    assert "data.jsonl" not in left and "000001.png" in left
    assert main(["world", "--out", str(tmp_path / "set"), "--count", "5", "--first-seed", "100"]) == 1
    says = capsys.readouterr().err
    assert "already holds a data set or part of one: 4 scene files (" in says  # 000000 and 000001, .png and .txt
    assert f"2 edge maps ({tmp_path / 'set' / 'control' / '000000.png'}, ...)" in says
    assert _listing(tmp_path / "set") == left
    (tmp_path / "edges" / "control").mkdir(parents=True)
    (tmp_path / "edges" / "control" / "000007.png").write_bytes(b"an edge map")
    assert main(["world", "--out", str(tmp_path / "edges"), "--count", "1"]) == 1
    assert "part of one: 1 edge map (" in capsys.readouterr().err


def test_the_world_command_writes_into_an_empty_folder_or_one_holding_other_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("my notes", encoding="utf-8")
    (tmp_path / "notes" / "photo.png").write_bytes(b"not the world's")
    for name in ("empty", "notes"):
        assert main(["world", "--out", str(tmp_path / name), "--count", "1"]) == 0
        assert (tmp_path / name / "data.jsonl").is_file()
    assert (tmp_path / "notes" / "photo.png").read_bytes() == b"not the world's"


def test_the_world_help_says_out_is_required(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["world", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default: None" not in out
    assert "--out OUT the data set's folder: a new or empty one (required)" in out


def test_judge_says_what_a_path_is_and_refuses_huge_pictures_from_their_header(tmp_path: Path, capsys) -> None:
    os.mkfifo(tmp_path / "fifo.png")
    Image.new("RGB", (5000, 8)).save(tmp_path / "huge.png")  # only the header's size is read
    cases = [
        ("fifo.png", "fifo.png: expected a picture, found a FIFO"),
        ("huge.png", "huge.png: expected a picture of at most 4096 x 4096 px (the shapes world draws 128 px"),
    ]
    for name, says in cases:
        assert main(["judge", str(tmp_path / name), "--prompt", sample_scene(5).caption()]) == 1
        assert says in capsys.readouterr().err


def test_world_says_scene_for_one(tmp_path: Path, capsys) -> None:
    assert main(["world", "--out", str(tmp_path / "one"), "--count", "1"]) == 0
    assert f"wrote 1 scene to {tmp_path / 'one'};" in capsys.readouterr().out


def test_a_picture_past_pillows_warning_size_is_refused_without_pillows_warning(tmp_path: Path, capsys) -> None:
    big = png_header(tmp_path / "big.png", 10000, 10000)  # 100 megapixels: Pillow warns (its limit is ~89)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that leaks fails the run
        assert main(["judge", str(big), "--prompt", "a large red circle in the center, on a black background"]) == 1
    assert "expected a picture of at most 4096 x 4096 px" in capsys.readouterr().err


def test_scene_draws_a_captions_picture_and_edge_map_as_the_shapes_scene_node(tmp_path: Path, capsys) -> None:
    caption = "a small blue square at the top left, on a white background"
    out = tmp_path / "new" / "scene.png"
    assert main(["scene", "--caption", f"  {caption.upper()}. ", "--out", str(out), "--size", "256"]) == 0
    scene = scene_for(caption)
    assert capsys.readouterr().out == (
        f"wrote {out} (the scene, 256x256 px)\nwrote {tmp_path / 'new' / 'scene-edges.png'} (its edge map, "
        f"256x256 px)\ncaption: {caption}\n"
    )
    assert Image.open(out).tobytes() == render(scene, 256).tobytes()
    assert Image.open(tmp_path / "new" / "scene-edges.png").tobytes() == edge_map(scene, 256).tobytes()
    assert Image.open(out).info["parameters"] == caption  # its prompt, for judge
    assert main(["judge", str(out)]) == 0 and capsys.readouterr().out.startswith(f"{out}: ok")
    for seed in (["--caption", "", "--seed", "7"], ["--seed", "7"]):  # the world's scene of the seed
        assert main(["scene", *seed, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert (
            printed.count("; replaced an earlier file)") == 2 and f"caption: {sample_scene(7).caption()}\n" in printed
        )
        assert Image.open(out).tobytes() == render(sample_scene(7)).tobytes()


def test_scene_draws_the_nodes_default_caption_in_outputs(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["scene"]) == 0
    assert f"caption: {DEFAULT_CAPTION}\n" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["scene-edges.png", "scene.png"]
    assert Image.open(tmp_path / "outputs" / "scene.png").size == (128, 128)


def test_scene_refuses_a_caption_outside_the_world_and_an_output_first(tmp_path: Path, capsys) -> None:
    cases = [
        (["--caption", "a red fox"], "error: --caption: expected a prompt of the shapes world, "),
        (["--caption", "a large red circle in the middle, on a black background"], "expected PLACE (at the top"),
        (
            ["--caption", "a red circle", "--seed", "5"],
            "error: --seed draws the world's scene of a seed in place of a ",
        ),
        (["--out", str(tmp_path / "scene.txt")], f"error: output {tmp_path / 'scene.txt'}: .txt is not an image"),
        (["--out", str(tmp_path)], f"error: output {tmp_path} is a folder"),
    ]
    for argv, says in cases:
        assert main(["scene", "--out", str(tmp_path / "s.png"), *argv]) == 1
        captured = capsys.readouterr()
        assert says in captured.err and captured.out == ""
    (tmp_path / "s-edges.png").mkdir()  # the edge map's name is checked too, before the picture is written
    assert main(["scene", "--out", str(tmp_path / "s.png")]) == 1
    assert f"error: output {tmp_path / 's-edges.png'} is a folder" in capsys.readouterr().err
    for argv, says in [
        (["--size", "33"], "--size: expected a whole number of pixels (32 to 2048, a multiple of 8), found 33"),
        (["--size", "4096"], "--size: expected a whole number of pixels (32 to 2048, a multiple of 8), found 4096"),
        (["--seed", "-1"], f"--seed: expected a whole number (0 to {2**64 - 1}), found -1"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["scene", "--out", str(tmp_path / "s.png"), *argv])
        assert exit_info.value.code == 2 and says in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-edges.png"]


def test_judge_says_the_overlap_with_the_prompts_scene_or_a_seeds(tmp_path: Path, capsys) -> None:
    caption = "a large red circle in the center, on a black background"
    assert main(["scene", "--caption", caption, "--out", str(tmp_path / "c.png")]) == 0
    assert main(["scene", "--caption", "", "--seed", "3", "--out", str(tmp_path / "s.png")]) == 0
    capsys.readouterr()
    picture = Image.open(tmp_path / "c.png")
    iou = foreground_iou(picture, scene_for(caption))
    assert 0.9 < iou < 1
    assert main(["judge", str(tmp_path / "c.png"), "--prompt", caption, "--overlap"]) == 0
    assert capsys.readouterr().out.startswith(
        f"{tmp_path / 'c.png'}: ok; overlap of the shapes with the scene's (IoU): "
    )
    assert main(["judge", str(tmp_path / "c.png"), "--prompt", caption, "--json"]) == 0  # not asked: not said
    assert "overlap" not in json.loads(capsys.readouterr().out)["images"][0]
    assert main(["judge", str(tmp_path / "c.png"), "--prompt", caption, "--overlap", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"][0]["overlap"] == iou
    # --scene-seed: the world's scene of that seed, the one `scene --caption '' --seed 3` drew, whatever the prompt
    assert main(["judge", str(tmp_path / "c.png"), "--prompt", caption, "--scene-seed", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"][0]["overlap"] == foreground_iou(picture, sample_scene(3))
    assert main(["judge", str(tmp_path / "s.png"), "--prompt", caption, "--scene-seed", "3", "--json"]) == 0
    seeded = Image.open(tmp_path / "s.png")
    assert json.loads(capsys.readouterr().out)["images"][0]["overlap"] == foreground_iou(seeded, sample_scene(3))


def test_judge_refuses_a_bad_scene_seed_and_names_a_picture_it_cannot_overlap(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["judge", "x.png", "--scene-seed", "-1"])
    assert exit_info.value.code == 2
    assert f"--scene-seed: expected a whole number (0 to {2**64 - 1}), found -1" in capsys.readouterr().err
    Image.new("RGB", (256, 128)).save(tmp_path / "wide.png")
    assert main(["judge", str(tmp_path / "wide.png"), "--prompt", sample_scene(5).caption(), "--overlap"]) == 1
    assert f"error: {tmp_path / 'wide.png'}: expected a square" in capsys.readouterr().err
