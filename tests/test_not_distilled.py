"""The embedded teacher, which is not distilled, run with a solver (not the LCM sampler) in fewer than 10 steps is
run, with one warning (the reverse of the guided-LCM warning): its model card measures it at 4, 6 and 8 DPM-Solver++
steps drawing 0, 5 and 21 whole pictures in 100 (65 at 20). Under the LCM sampler it draws well (4 steps, guidance 1:
colour 94.3%, kind 79.7%, position 95.8%), so that says nothing, nor do other models: their weights do not tell
whether they are distilled. The Python API warns as the command line does."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pixart_delta_core import PixArtPipeline
from pixart_delta_core.cli import main
from pixart_delta_core.demo.embedded_files import embedded_path
from tests.helpers import Encoded

FILES = ["--t5", "shapes-t5", "--vae", "shapes-taesd", "--device", "cpu"]
NOT_DISTILLED = "shapes-teacher is not distilled: drawn with "
ITS_OWN = (
    ", its pictures break up (in fewer than 10 steps; its model card measures dpm_solver++ in 4, 6, 8, 10 and 20 "
    "steps: 0, 5, 21, 38 and 65 whole pictures in 100); its own settings are dpm_solver++, 14 steps, guidance 4.5; or "
    "use the LCM sampler (lcm) in 4 steps without guidance, or the distilled shapes-lcm"
)


def not_distilled_warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not distilled" in r.getMessage()
    ]


@pytest.mark.parametrize(
    ("extra", "warned"),
    [
        (["--transformer", "shapes-teacher", "--steps", "2"], "dpm_solver++ in 2 steps"),  # its own, too few steps
        (["--transformer", "shapes-teacher", "--sampler", "euler", "--steps", "4"], "euler in 4 steps"),
        (["--transformer", "shapes-teacher", "--sampler", "ddim", "--steps", "1"], "ddim in 1 step"),
        (["--transformer", "shapes-teacher", "--sampler", "lcm"], None),  # the LCM sampler draws it well
        (["--transformer", "shapes-teacher", "--sampler", "lcm", "--steps", "2"], None),
        (["--transformer", "shapes-teacher"], None),  # its own: dpm_solver++, 14 steps
        (["--transformer", "shapes-teacher", "--steps", "9"], "dpm_solver++ in 9 steps"),  # 8 steps: 21% whole
        (["--transformer", "shapes-teacher", "--steps", "10"], None),
        (["--transformer", "shapes-lcm", "--sampler", "euler", "--steps", "2"], None),  # distilled
    ],
)
def test_the_teacher_with_a_solver_in_few_steps_warns_once_and_runs(
    tmp_path: Path, caplog, stop_at_encoding, extra: list[str], warned: str | None
) -> None:
    argv = ["generate", *FILES, *extra, "--prompt", "a blue square", "--out", str(tmp_path / "x.png")]
    with caplog.at_level(logging.WARNING), pytest.raises(Encoded):  # not refused: the run goes on to the encoder
        main(argv)
    said = not_distilled_warnings(caplog)
    assert said == ([] if warned is None else [NOT_DISTILLED + warned + ITS_OWN]), said


@pytest.mark.parametrize(
    ("transformer", "lora", "warned"),
    [
        ("shapes-teacher", False, True),
        ("shapes-teacher", True, False),  # a LoRA changed it (an LCM-LoRA distils it): its weights do not say
        ("shapes-lcm", False, False),  # distilled
    ],
)
def test_the_python_api_warns_as_the_command_line_does(
    tmp_path: Path, caplog, stop_at_encoding, transformer: str, lora: bool, warned: bool
) -> None:
    """PixArtPipeline tells the embedded teacher by its file and gives the command line's warning, once."""
    loras = ()
    if lora:  # rank 1 on the first attention query, all zeros: it changes nothing but what the pipeline knows
        loras = tmp_path / "zero.safetensors"
        query = "transformer.transformer_blocks.0.attn1.to_q"
        width = 192  # the embedded transformers' hidden size
        save_file(
            {f"{query}.lora_A.weight": torch.zeros(1, width), f"{query}.lora_B.weight": torch.zeros(width, 1)}, loras
        )
    files = [embedded_path(name) for name in (transformer, "shapes-t5", "shapes-taesd")]
    pipeline = PixArtPipeline(*files, device="cpu", loras=loras)
    with caplog.at_level(logging.WARNING), pytest.raises(Encoded):  # not refused: the run goes on to the encoder
        pipeline("a blue square", sampler="euler", steps=4)
    said = not_distilled_warnings(caplog)
    assert said == ([NOT_DISTILLED + "euler in 4 steps" + ITS_OWN] if warned else []), said


@pytest.mark.parametrize(
    ("extra", "warned"),
    [
        (["--sampler", "dpm_solver++"], True),  # 14 steps at guidance 4.5: 36 whole pictures in 100, 66 by lcm
        (["--sampler", "euler", "--steps", "2"], True),
        ([], False),  # its own: lcm, 4 steps
        (["--steps", "2"], False),
    ],
)
def test_the_student_with_another_sampler_than_lcm_warns_once_and_runs(
    tmp_path: Path, caplog, stop_at_encoding, extra: list[str], warned: bool
) -> None:
    argv = ["generate", *FILES, "--transformer", "shapes-lcm", *extra, "--prompt", "a blue square"]
    with caplog.at_level(logging.WARNING), pytest.raises(Encoded):  # not refused: the run goes on to the encoder
        main([*argv, "--out", str(tmp_path / "x.png")])
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "LCM student" in r.getMessage()]
    assert len(said) == int(warned), said
    if warned:
        assert said[0].startswith(f"shapes-lcm is an LCM student, distilled for the LCM sampler: drawn with {extra[1]}")
        assert said[0].endswith("its own settings are lcm, 4 steps, no guidance")
