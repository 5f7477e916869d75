"""The LCM sampler with guidance above 1 is run, with one warning: a distilled LCM model has the guidance built in
(PixArt-δ runs it unguided), so guidance on it garbles the picture; a negative prompt needs a guided sampler. The
embedded teacher, known not to be distilled, is run guided with no warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pixart_delta_core.cli import build_parser, main
from tests.helpers import Encoded

EMBEDDED = ["--transformer", "shapes-lcm", "--t5", "shapes-t5", "--vae", "shapes-taesd", "--device", "cpu"]


def lcm_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "LCM sampler" in r.getMessage()]


@pytest.mark.parametrize(
    ("extra", "warned"),
    [
        (["--guidance", "4.5"], True),
        (["--guidance", "4.5", "--negative-prompt", "a red circle"], True),
        (["--guidance", "1"], False),  # 1 and 0 both run unguided
        ([], False),  # lcm's own: 0
        (["--sampler", "dpm_solver++", "--steps", "2", "--guidance", "4.5"], False),
        (["--transformer", "shapes-teacher", "--sampler", "lcm", "--guidance", "4.5"], False),  # not distilled
    ],
)
def test_the_lcm_sampler_with_guidance_warns_once_and_runs(
    tmp_path: Path, caplog, stop_at_encoding, extra: list[str], warned: bool
) -> None:
    argv = ["generate", *EMBEDDED, "--prompt", "a blue square", "--out", str(tmp_path / "x.png"), *extra]
    with caplog.at_level(logging.WARNING), pytest.raises(Encoded):  # not refused: the run goes on to the encoder
        main(argv)
    said = lcm_warnings(caplog)
    assert len(said) == int(warned), said
    if warned:
        assert said[0].startswith("the LCM sampler with guidance 4.5: a distilled LCM model is run without guidance")
        assert "a negative prompt needs a guided sampler" in said[0]


def test_the_teacher_under_the_lcm_sampler_with_guidance_is_run_guided_with_no_warning(
    tmp_path: Path, caplog, stop_at_encoding
) -> None:
    """The teacher is not distilled: guidance is its own (its settings: guidance 4.5), so the LCM sampler runs it
    guided, as asked, and the distilled model's warning (expect a broken picture) would be wrong: it is said at info."""
    argv = ["generate", *EMBEDDED, "--transformer", "shapes-teacher", "--sampler", "lcm", "--guidance", "4.5"]
    with caplog.at_level(logging.INFO), pytest.raises(Encoded):
        main([*argv, "--prompt", "a blue square", "--out", str(tmp_path / "x.png")])
    said = [r.getMessage() for r in caplog.records if "LCM sampler" in r.getMessage()]
    assert said == ["shapes-teacher is not distilled: the LCM sampler runs it guided, at guidance 4.5"], said
    assert all(r.levelno == logging.INFO for r in caplog.records if "LCM sampler" in r.getMessage())


def test_the_negative_prompt_help_says_it_needs_guidance_and_a_guided_sampler(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "acts only with guidance > 1, which is for a guided sampler" in help_text
    assert "a distilled LCM model runs unguided, guidance 0 or 1" in help_text
