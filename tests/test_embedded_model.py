"""The embedded model makes the pictures its prompts ask for: the judge's scores over 100 held-out prompts of
the shapes world, fixed seeds, asserted at the thresholds the model card states (issue 13):

- teacher, DPM-Solver++ 20 steps (the issue's 14-20), guidance 4.5: colour >= 90%, kind >= 80%, position >= 80%;
- LCM student, 4 steps, no guidance: within 5 points of the teacher on each, and above the teacher at 4 steps;
- ControlNet: the shapes sit on the edge map's (mean IoU >= 0.6) and clearly closer to them than in the same prompts
  without it, under the teacher guided (the reference's setting) and under the student (the demo's), and strength 0
  reproduces the model without it exactly;
- int8 T5 and int8 transformer: within 3 points of full precision.

Pictures are drawn once per configuration (cached), in fp32 on the CPU.

The shipped model is a short training run (its model card: teacher 19,500 steps, the last 13,500 on the windowed T5;
the student distilled from it in 600; the ControlNet 5,700 steps). Beside the thresholds above, the teacher's and
the student's scores must stay above this run's measured floors (regression guards).
"""

from __future__ import annotations

from functools import cache

import pytest
import torch

from pixart_delta_core.demo.embedded import PICTURE
from pixart_delta_core.demo.evaluation import (
    Overlap,
    draw,
    embedded_pipeline,
    evaluation_scenes,
    overlap,
    prompt_scores,
)
from pixart_delta_core.pipeline.generation import Control
from pixart_delta_core.world.judge import Scores
from pixart_delta_core.world.render import edge_map

ATTRIBUTES = ("colour", "kind", "position")
SCENES = evaluation_scenes(100)


@cache
def scores(transformer: str, sampler: str, steps: int, guidance: float, **options: str) -> Scores:
    pipeline = embedded_pipeline(transformer, **options)
    images = draw(pipeline, SCENES, sampler=sampler, steps=steps, guidance=guidance)
    return prompt_scores(images, SCENES)


def teacher(steps: int = 20, **options: str) -> Scores:
    return scores("shapes-teacher", "dpm_solver++", steps, 4.5, **options)


def student(steps: int = 4, **options: str) -> Scores:
    return scores("shapes-lcm", "lcm", steps, 1.0, **options)


# This run's measured scores (scripts/embedded_model/evaluate.py), less a margin for platforms: teacher 1.00,
# 0.932, 0.818, 0.938; student in 4 steps 1.00, 0.917, 0.818, 0.938 (with the decoder of commit 6991e77:
# teacher kind 0.797, student kind 0.771).
TEACHER_FLOOR = {"background": 0.9, "colour": 0.9, "kind": 0.78, "position": 0.9}
STUDENT_FLOOR = {"background": 0.9, "colour": 0.88, "kind": 0.78, "position": 0.9}


def test_the_teacher_scores_above_this_runs_floor() -> None:
    fractions = teacher().fractions()
    for attribute, floor in TEACHER_FLOOR.items():
        assert fractions[attribute] >= floor, (attribute, teacher().table())


def test_the_lcm_student_scores_above_this_runs_floor() -> None:
    fractions = student().fractions()
    for attribute, floor in STUDENT_FLOOR.items():
        assert fractions[attribute] >= floor, (attribute, student().table())


def test_the_teacher_puts_its_shapes_where_asked() -> None:
    assert teacher().fractions()["position"] >= 0.80, teacher().table()


def test_the_teacher_draws_the_asked_colours() -> None:
    assert teacher().fractions()["colour"] >= 0.90, teacher().table()


# 81.8% (157 of 192 shapes): circles, squares and triangles 87-100%, stars 54% (the autoencoder's own round
# trip reads 82% of the world's stars; MODEL_CARD.md).
def test_the_teacher_draws_the_asked_kinds() -> None:
    assert teacher().fractions()["kind"] >= 0.80, teacher().table()


# The student is 1.5 points below the teacher on colour, level on kind and on position (over seeds 0-2: MODEL_CARD.md).
def test_the_lcm_student_in_4_steps_is_within_5_points_of_the_teacher() -> None:
    ours, reference = student().fractions(), teacher().fractions()
    for attribute in ATTRIBUTES:
        assert ours[attribute] >= reference[attribute] - 0.05, (attribute, student().table(), teacher().table())


def test_the_student_in_4_steps_beats_the_teacher_in_4_steps() -> None:
    ours, hurried = student().fractions(), teacher(steps=4).fractions()
    assert sum(ours[a] for a in ATTRIBUTES) > sum(hurried[a] for a in ATTRIBUTES) + 0.15, (
        student().table(),
        teacher(steps=4).table(),
    )


@pytest.mark.parametrize("option", [{"t5_quantization": "int8"}, {"quantization": "int8"}])
def test_int8_stays_within_3_points_of_full_precision(option: dict[str, str]) -> None:
    pytest.importorskip("bitsandbytes", reason="the int8 layers are bitsandbytes'")
    ours, reference = student(**option).fractions(), student().fractions()
    for attribute in ATTRIBUTES:
        assert abs(ours[attribute] - reference[attribute]) <= 0.03, (attribute, student(**option).table())


# The ControlNet under the reference's setting (the teacher, DPM-Solver++ 14 steps, guidance 4.5) and under the
# student in 4 steps without guidance (the demo's and demo_controlnet's). Guidance scales the prompt's pull on the
# layout by 4.5 while the ControlNet's residual, the same in both branches, is not scaled, so its gain is smaller
# there (MODEL_CARD.md, ControlNet).
CONTROL_SETTINGS = {
    "shapes-teacher": {"sampler": "dpm_solver++", "steps": 14, "guidance": 4.5},
    "shapes-lcm": {"sampler": "lcm", "steps": 4, "guidance": 1.0},
}


@cache
def controlled(transformer: str, with_controlnet: bool) -> Overlap:
    """The overlap of the scenes drawn over their edge maps, or of the same prompts and noise without the ControlNet."""
    controlnet = {"controlnet": "shapes-controlnet"} if with_controlnet else {}
    pipeline = embedded_pipeline(transformer, **controlnet)
    return overlap(draw(pipeline, SCENES, control=with_controlnet, **CONTROL_SETTINGS[transformer]), SCENES)


@pytest.mark.parametrize("transformer", CONTROL_SETTINGS)
def test_the_controlnet_puts_the_shapes_on_the_edge_map(transformer: str) -> None:
    assert controlled(transformer, True).mean >= 0.6


# Measured at seeds 0, 1, 2 (scripts/embedded_model/evaluate.py --seed): the teacher +0.117, +0.107, +0.108 of IoU
# over the same prompts without it, closer in 88, 86, 89 pictures of 100; the student +0.160, +0.161, +0.149, closer
# in 100, 99, 99. Each bar is the least of the three less a margin for platforms.
@pytest.mark.parametrize(("transformer", "gain", "closer"), [("shapes-teacher", 0.10, 80), ("shapes-lcm", 0.14, 95)])
def test_the_controlnet_overlaps_clearly_more_than_the_model_without_it(
    transformer: str, gain: float, closer: int
) -> None:
    with_it, without = controlled(transformer, True), controlled(transformer, False)
    assert with_it.mean >= without.mean + gain, (with_it.mean, without.mean)
    assert with_it.closer_than(without) >= closer, with_it.closer_than(without)


def test_strength_0_reproduces_the_model_without_the_controlnet() -> None:
    scene = SCENES[0]
    settings = {"sampler": "dpm_solver++", "steps": 6, "guidance": 4.5, "seed": 3, **PICTURE}
    off = embedded_pipeline("shapes-teacher", controlnet="shapes-controlnet")(
        scene.caption(), control=Control(edge_map(scene), strength=0.0), **settings
    )
    plain = embedded_pipeline("shapes-teacher")(scene.caption(), **settings)
    assert torch.equal(off.latents, plain.latents)
