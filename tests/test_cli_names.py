"""An embedded model's name and a file or folder of that name here: the bare name is the embedded model, said once
on stderr after the checks; a path spelling (./shapes-lcm, an absolute path) is the file here. The same for every
option that takes a name, and for ``info``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from pixart_delta_core.cli import main
from pixart_delta_core.demo.embedded_files import by_name, embedded_path
from pixart_delta_core.errors import InputError

OPTIONS = {"--transformer": "shapes-lcm", "--t5": "shapes-t5", "--vae": "shapes-taesd"}
OPTIONS["--controlnet"] = "shapes-controlnet"
PICTURE_HERE = "a PNG picture, not a checkpoint"


@pytest.fixture
def here(tmp_path: Path, monkeypatch) -> Path:
    """The current folder, holding an edge map."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (128, 128)).save(tmp_path / "hed.png")
    return tmp_path


def picture_named(here: Path, name: str) -> None:
    """A picture here named like an embedded model."""
    Image.new("RGB", (64, 64)).save(here / name, "PNG")


def generate(option: str, value: str, control: bool = True) -> list[str]:
    """``generate`` with the embedded models by name, ``option`` given ``value``; the ControlNet where ``control``."""
    given = {o: name for o, name in OPTIONS.items() if control or o != "--controlnet"} | {option: value}
    argv = ["generate", *(item for pair in given.items() for item in pair), "--device", "cpu", "--out", "x.png"]
    argv += ["--prompt", "a small red circle at the top left, on a white background"]
    return [*argv, "--control-image", "hed.png"] if control else argv


def notes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is the pack's embedded" in r.getMessage()]


@pytest.mark.parametrize("option", OPTIONS)
def test_a_bare_name_is_the_embedded_model_and_the_file_here_is_named(here, nothing_loads, caplog, option) -> None:
    name = OPTIONS[option]
    picture_named(here, name)
    with caplog.at_level(logging.WARNING), pytest.raises(AssertionError, match="a model was loaded"):
        main(generate(option, name))  # past the checks: the embedded model, not the picture here, was read
    said = notes(caplog)
    assert len(said) == 1 and said[0].startswith(f"{option} {name} is the pack's embedded "), said
    assert said[0].endswith(f": using it, not the file ./{name} here (give ./{name} to use that file)")


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("spelling", ["./{name}", "{here}/{name}"], ids=["dot-slash", "absolute"])
def test_a_path_spelling_is_the_file_here(here, nothing_loads, capsys, caplog, option, spelling: str) -> None:
    name = OPTIONS[option]
    picture_named(here, name)
    with caplog.at_level(logging.WARNING):
        assert main(generate(option, spelling.format(name=name, here=here))) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and PICTURE_HERE in err and err.count("\n") == 1, err
    assert caplog.records == []


def test_the_note_comes_after_the_refusals(here, nothing_loads, capsys, caplog) -> None:
    picture_named(here, "shapes-lcm")
    with caplog.at_level(logging.WARNING):
        assert main([*generate("--transformer", "shapes-lcm"), "--steps", "1000"]) == 1
    said = "error: --steps 1000: lcm (this model's sampler when no --sampler is given) takes 1 to 50 steps\n"
    assert capsys.readouterr().err == said
    assert caplog.records == []


def test_a_folder_here_named_like_the_embedded_t5_is_named_a_folder(
    tmp_path: Path, monkeypatch, nothing_loads, caplog
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes-t5").mkdir()
    with caplog.at_level(logging.WARNING), pytest.raises(AssertionError, match="a model was loaded"):
        main(generate("--t5", "shapes-t5", control=False))
    assert notes(caplog) == [
        "--t5 shapes-t5 is the pack's embedded T5 text encoder: using it, not the folder ./shapes-t5 here (give "
        "./shapes-t5 to use that folder)"
    ]


def test_info_says_it_once_and_takes_a_path_spelling_as_the_file_here(here, capsys, caplog) -> None:
    picture_named(here, "shapes-lcm")
    picture_named(here, "shapes-taesd")
    with caplog.at_level(logging.WARNING):
        assert main(["info", "shapes-lcm", "shapes-lcm"]) == 0
    assert capsys.readouterr().out.count("PixArt transformer") == 2
    assert notes(caplog) == [
        "shapes-lcm is the pack's embedded transformer: using it, not the file ./shapes-lcm here (give ./shapes-lcm "
        "to use that file)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["info", "./shapes-lcm", str(here / "shapes-taesd")]) == 1
    err = capsys.readouterr().err
    assert err.count(PICTURE_HERE) == 2 and caplog.records == []


def test_a_path_spelling_of_no_file_here_says_the_bare_name_is_the_embedded_model(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    said = r"^--vae \./shapes-taesd: no such file or folder here; shapes-taesd alone is the pack's embedded VAE$"
    with pytest.raises(InputError, match=said):
        by_name("./shapes-taesd", "--vae")
    assert by_name("shapes-taesd", "--vae") == embedded_path("shapes-taesd")
