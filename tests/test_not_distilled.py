"""The embedded teacher, which is not distilled, run with the LCM sampler or in an LCM's few steps is run, with one
warning (the reverse of the guided-LCM warning): its model card measures it at 4 DPM-Solver++ steps drawing no whole
picture. Other models say nothing: their weights do not tell whether they are distilled."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pixart_delta_core.cli import main
from pixart_delta_core.pipeline.generation import PixArtPipeline

FILES = ["--t5", "shapes-t5", "--vae", "shapes-taesd", "--device", "cpu"]
NOT_DISTILLED = "shapes-teacher is not distilled, so "
ITS_OWN = (
    " expect an unclear picture: it is drawn with dpm_solver++, 14 steps, guidance 4.5 (its defaults when no sampler "
    "is given); the distilled shapes-lcm draws in 4 LCM steps"
)


class Encoded(Exception):
    """Raised where the run would encode the prompts: the checks and warnings are all behind."""


@pytest.fixture
def stop_at_encoding(monkeypatch) -> None:
    def encode(self, *args, **kwargs):
        raise Encoded

    monkeypatch.setattr(PixArtPipeline, "encode_prompts", encode)


def not_distilled_warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not distilled" in r.getMessage()
    ]


@pytest.mark.parametrize(
    ("extra", "warned"),
    [
        (["--transformer", "shapes-teacher", "--sampler", "lcm"], "with the LCM sampler"),
        (["--transformer", "shapes-teacher", "--lcm-timesteps", "diffusers"], "with the LCM sampler"),  # lcm implied
        (["--transformer", "shapes-teacher", "--steps", "2"], "in 2 steps"),  # its own sampler, too few steps
        (["--transformer", "shapes-teacher", "--sampler", "euler", "--steps", "4"], "in 4 steps"),
        (["--transformer", "shapes-teacher"], None),  # its own: dpm_solver++, 14 steps
        (["--transformer", "shapes-teacher", "--steps", "5"], None),
        (["--transformer", "shapes-lcm", "--steps", "2"], None),  # distilled
    ],
)
def test_the_teacher_with_an_lcms_sampler_or_steps_warns_once_and_runs(
    tmp_path: Path, caplog, stop_at_encoding, extra: list[str], warned: str | None
) -> None:
    argv = ["generate", *FILES, *extra, "--prompt", "a blue square", "--out", str(tmp_path / "x.png")]
    with caplog.at_level(logging.WARNING), pytest.raises(Encoded):  # not refused: the run goes on to the encoder
        main(argv)
    said = not_distilled_warnings(caplog)
    assert said == ([] if warned is None else [NOT_DISTILLED + warned + ITS_OWN]), said
