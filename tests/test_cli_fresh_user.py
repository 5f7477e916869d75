"""What a fresh user's first ``generate`` runs met: each mistake is refused (or warned of) saying what it found."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from pixart_delta_core.checkpoints.files import read_json
from pixart_delta_core.cli import main, warn_outside_the_world
from pixart_delta_core.demo.embedded_files import by_name, embedded_path
from pixart_delta_core.demo.files import write_demo_models
from pixart_delta_core.errors import CheckpointError, InputError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_demo_models(tmp_path_factory.mktemp("models"))


def run(capsys, files, tmp_path: Path, *extra: str, embedded: bool = False) -> str:
    models = ["--transformer", "shapes-lcm", "--t5", "shapes-t5", "--vae", "shapes-taesd"]
    if not embedded:
        models = ["--transformer", str(files.transformer), "--t5", str(files.t5), "--vae", str(files.vae)]
        models += ["--tokenizer", str(files.tokenizer)]
    argv = ["generate", *models, "--prompt", "a fox", "--out", str(tmp_path / "x.png"), "--device", "cpu", *extra]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("option", ["--init-image", "--control-image"])
def test_an_image_option_names_what_it_found(files, tmp_path: Path, nothing_loads, capsys, option: str) -> None:
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    extra = ["--controlnet", str(files.transformer)] if option == "--control-image" else []
    err = run(capsys, files, tmp_path, option, str(fifo), *extra)
    assert f"{option} {fifo}: expected an image file, found a FIFO (named pipe)" in err
    assert "folder" not in err
    err = run(capsys, files, tmp_path, option, str(tmp_path), *extra)
    assert f"{option} {tmp_path}: expected an image file, found a folder" in err


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--control-strength", "2"], "error: --control-strength 2 needs --control-image (the edge map)"),
        (["--control-start", "0.2"], "error: --control-start 0.2 needs --control-image (the edge map)"),
        (
            ["--control-start", "0.2", "--control-end", "0.5"],
            "error: --control-start 0.2 and --control-end 0.5 need --control-image (the edge map)",
        ),
    ],
)
def test_control_options_without_a_control_image_are_refused(
    files, tmp_path: Path, nothing_loads, capsys, extra: list[str], said: str
) -> None:
    assert run(capsys, files, tmp_path, *extra) == said


def test_a_control_image_on_an_embedded_transformer_asks_for_the_embedded_controlnet(
    files, tmp_path: Path, nothing_loads, capsys
) -> None:
    image = tmp_path / "hed.png"
    Image.new("RGB", (64, 64)).save(image)
    err = run(capsys, files, tmp_path, "--control-image", str(image), embedded=True)
    assert err == (
        "error: --control-image needs --controlnet: the embedded transformer shapes-lcm holds no ControlNet "
        "(the pack's embedded one is shapes-controlnet)"
    )


def test_a_control_image_on_a_plain_transformer_says_simply_it_needs_a_controlnet(
    files, tmp_path: Path, nothing_loads, capsys
) -> None:
    image = tmp_path / "hed.png"
    Image.new("RGB", (64, 64)).save(image)
    err = run(capsys, files, tmp_path, "--control-image", str(image))
    assert err == (
        f"error: a control image needs a ControlNet: give --controlnet FILE on the command line (controlnet= in "
        f"Python); the transformer file {files.transformer.name} holds none"
    )


def test_an_output_under_a_file_says_it_is_a_file(files, tmp_path: Path, nothing_loads, capsys) -> None:
    (tmp_path / "afile").write_text("")
    err = run(capsys, files, tmp_path, "--out", str(tmp_path / "afile" / "y.png"))
    assert err == f"error: output {tmp_path / 'afile' / 'y.png'}: {tmp_path / 'afile'} is a regular file, not a folder"


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null here")
def test_an_output_that_is_a_device_says_so(files, tmp_path: Path, nothing_loads, capsys) -> None:
    err = run(capsys, files, tmp_path, "--out", "/dev/null")
    assert "output /dev/null: expected an image file to write, found a character device" in err
    assert "extension" not in err


def test_a_config_that_is_not_json_says_where(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "a": 1,\n}\n')
    with pytest.raises(CheckpointError, match=r"config.json: expected UTF-8 JSON, found text that is not valid JSON "):
        read_json(path)
    with pytest.raises(CheckpointError, match=r"at line 3 column 1\)$"):
        read_json(path)


def test_an_embedded_name_in_another_case_is_suggested() -> None:
    with pytest.raises(
        InputError, match=r"--transformer shapes-LCM: no such file or folder; did you mean shapes-lcm\?"
    ):
        by_name("shapes-LCM", "--transformer")
    with pytest.raises(InputError) as caught:
        by_name("SHAPES-LCM", "--vae")  # another kind's model: no suggestion of it for --vae
    assert "did you mean" not in str(caught.value)


@pytest.mark.parametrize("prompt", ["a purple elephant riding a bicycle", ""])
def test_an_embedded_transformer_warns_of_a_prompt_outside_the_world(prompt: str, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        warn_outside_the_world(embedded_path("shapes-lcm"), [prompt])
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    message = caplog.records[0].getMessage()
    assert "shapes-lcm was trained only on the shapes world's prompts" in message
    assert repr(prompt) in message and '"a SIZE COLOUR KIND PLACE"' in message


def test_no_warning_for_a_world_prompt_or_another_transformer(files, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        warn_outside_the_world(
            embedded_path("shapes-lcm"), ["a small red circle at the top left, on a white background"]
        )
        warn_outside_the_world(files.transformer, ["a purple elephant riding a bicycle"])
    assert caplog.records == []


WORLD_PROMPT = "a small red circle at the top left, on a white background"


@pytest.mark.parametrize(
    ("extra", "warned"),
    [
        (["--sampler", "dpm_solver++", "--negative-prompt", "blurry, low quality"], True),
        (["--sampler", "lcm", "--guidance", "3", "--negative-prompt", "blurry, low quality"], True),  # guided LCM
        (["--sampler", "dpm_solver++", "--negative-prompt", ""], False),  # the empty prompt: nothing to judge
        (["--sampler", "lcm", "--negative-prompt", "blurry, low quality"], False),  # LCM, no guidance: not used
        (["--sampler", "dpm_solver++", "--negative-prompt", WORLD_PROMPT], False),
    ],
    ids=["guided", "lcm-guided", "empty", "unguided", "in-grammar"],
)
def test_an_embedded_transformer_warns_once_of_a_negative_prompt_outside_the_world(
    tmp_path: Path, nothing_loads, caplog, extra: list[str], warned: bool
) -> None:
    models = ["--transformer", "shapes-teacher", "--t5", "shapes-t5", "--vae", "shapes-taesd", "--device", "cpu"]
    argv = ["generate", *models, "--prompt", WORLD_PROMPT, "--out", str(tmp_path / "x.png"), *extra]
    with caplog.at_level(logging.WARNING), pytest.raises(AssertionError, match="a model was loaded"):
        main(argv)  # past every check: the warnings come after them, before the load
    said = [r.getMessage() for r in caplog.records if "outside its grammar" in r.getMessage()]
    if warned:
        assert len(said) == 1 and "; the negative prompt 'blurry, low quality' is outside its grammar" in said[0]
    else:
        assert said == []


def test_several_prompts_outside_the_world_are_named_in_one_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        warn_outside_the_world(embedded_path("shapes-lcm"), ["a fox", WORLD_PROMPT, "an owl"])
    assert len(caplog.records) == 1
    assert "; the prompts 'a fox', 'an owl' are outside its grammar" in caplog.records[0].getMessage()
