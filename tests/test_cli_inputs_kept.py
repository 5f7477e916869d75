"""``generate`` keeps what the user gave: no output name is an input picture or a link into another file, every
--negative-prompt given acts, and an option for a part the run does not have is refused."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from PIL import Image

from pixart_delta_core.cli import main


def run(capsys, tmp_path: Path, *extra: str, prompts: tuple[str, ...] = ("a fox",)) -> str:
    """``generate`` with the embedded models and ``extra``, refused: its one-line error."""
    argv = ["generate", "--transformer", "shapes-lcm", "--t5", "shapes-t5", "--vae", "shapes-taesd", "--device", "cpu"]
    argv += [item for prompt in prompts for item in ("--prompt", prompt)]
    assert main([*argv, *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("option", "extra", "prompts", "written"),
    [
        ("--init-image", ("--batch", "2"), ("a fox",), "q-p1-2.png"),
        ("--init-image", (), ("a fox", "a cat"), "q-p2-1.png"),
        ("--control-image", ("--controlnet", "shapes-controlnet", "--batch", "2"), ("a fox",), "q-p1-1.png"),
    ],
)
def test_no_numbered_output_name_is_an_input_picture(
    tmp_path: Path, nothing_loads, capsys, option: str, extra: tuple, prompts: tuple, written: str
) -> None:
    picture = tmp_path / written
    Image.new("RGB", (128, 128), "red").save(picture)
    before = picture.read_bytes()
    err = run(capsys, tmp_path, option, str(picture), "--out", str(tmp_path / "q.png"), *extra, prompts=prompts)
    assert f"writes {picture}, which is the {option}: the picture would replace it" in err, err
    assert picture.read_bytes() == before


def test_an_out_that_is_a_link_is_refused_naming_its_target(tmp_path: Path, nothing_loads, capsys) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    link = tmp_path / "link.png"
    link.symlink_to(precious)
    err = run(capsys, tmp_path, "--out", str(link))
    assert re.search(rf"link\.png is a link to {re.escape(str(precious))}: the picture would be written into", err)
    assert precious.read_text() == "keep me" and os.path.islink(link)
    dangling = tmp_path / "gone.png"
    dangling.symlink_to(tmp_path / "nowhere" / "x.png")
    assert "gone.png is a link to" in run(capsys, tmp_path, "--out", str(dangling))
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(("negatives", "prompts"), [(2, 1), (2, 3), (3, 2)])
def test_negative_prompts_neither_once_nor_once_per_prompt_are_refused(
    tmp_path: Path, nothing_loads, capsys, negatives: int, prompts: int
) -> None:
    given = [item for n in range(negatives) for item in ("--negative-prompt", f"blurry {n}")]
    err = run(capsys, tmp_path, *given, "--sampler", "euler", prompts=tuple(f"a fox {n}" for n in range(prompts)))
    assert (
        f"--negative-prompt given {negatives} times for {prompts} --prompt: expected once (for every prompt) or "
        f"once per --prompt, in order" in err
    ), err


class Encoded(Exception):
    """Raised by the stand-in encoder with the negative prompts it was given."""


@pytest.mark.parametrize(
    ("negatives", "encoded", "written"),
    [
        (("blurry", "dark"), ["blurry", "dark"], ["blurry", "dark"]),
        (("blurry",), ["blurry", "blurry"], ["blurry", "blurry"]),
    ],
    ids=["one-per-prompt", "once-for-all"],
)
def test_each_negative_prompt_reaches_its_prompt_and_its_pictures_record(
    tmp_path: Path, monkeypatch, capsys, negatives: tuple, encoded: list, written: list
) -> None:
    from pixart_delta_core.pipeline.generation import PixArtPipeline
    from pixart_delta_core.pipeline.outputs import RunRecord

    def encode(self, prompts, negatives, *args):
        raise Encoded(negatives)

    monkeypatch.setattr(PixArtPipeline, "encode_prompts", encode)
    given = [item for negative in negatives for item in ("--negative-prompt", negative)]
    argv = ["generate", "--transformer", "shapes-lcm", "--t5", "shapes-t5", "--vae", "shapes-taesd", "--device", "cpu"]
    argv += ["--prompt", "a fox", "--prompt", "an owl", "--sampler", "euler", "--out", str(tmp_path / "x.png")]
    with pytest.raises(Encoded) as caught:
        main([*argv, *given])
    assert caught.value.args[0] == encoded
    record = RunRecord(
        ["a fox", "an owl"], negatives if len(negatives) > 1 else negatives[0], 0, 2, "euler", 3.0, (128, 128), {}
    )
    assert [record.parameters(p, 0).splitlines()[1] for p in range(2)] == [f"Negative prompt: {n}" for n in written]


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (("--lora-controlnet",), "--lora-controlnet needs a ControlNet (--controlnet and --control-image)"),
        (("--lora-controlnet", "--lora", "{lora}"), "--lora-controlnet needs a ControlNet"),
        (
            ("--lora-controlnet", "--controlnet", "shapes-controlnet", "--control-image", "{image}"),
            "--lora-controlnet needs --lora (the LoRAs the ControlNet's copies are to take): none given",
        ),
    ],
)
def test_lora_controlnet_without_a_controlnet_or_a_lora_is_refused(
    tmp_path: Path, nothing_loads, capsys, extra: tuple, said: str
) -> None:
    image = tmp_path / "edges.png"
    Image.new("RGB", (128, 128)).save(image)
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"")
    err = run(capsys, tmp_path, *(e.format(image=image, lora=lora) for e in extra), "--out", str(tmp_path / "x.png"))
    assert said in err, err
