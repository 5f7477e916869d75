"""The embedded model's scores, as its model card states them: the judge over 100 held-out prompts.

    python scripts/embedded_model/evaluate.py [--prompts 100] [--control-prompts 100] [--teacher FILE]
        [--autoencoder FILE] [--seed 0]

Prints one JSON line per measurement (the autoencoder's round trip of the world's own pictures, the ceiling of
every model on it; the teacher with DPM-Solver++ at 20 and 4 steps and with the LCM sampler at 4 and 2 (and at 4
with guidance), the LCM student at 1, 2 and 4 steps (and by DPM-Solver++ with guidance), int8 T5 and int8
transformer under the student; the overlap's bounds in the world's own pictures, then the ControlNet's overlap
with its edge maps under the teacher guided and unguided and under the student, against the same prompts without
it), its scores per attribute and per asked kind, and the time each took.
The runs take the first ``--prompts`` held-out prompts, the ControlNet's the first ``--control-prompts``; 0 skips
them.
``--teacher`` and ``--autoencoder`` measure other files (the model card's longer runs) in place of the shipped
teacher and autoencoder. ``--seed`` draws from other starting noise (the model card's spread over seeds; its
headline scores and the tests use 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from pixart_delta_core.cli_types import whole_number
from pixart_delta_core.demo.embedded_files import embedded_path
from pixart_delta_core.demo.evaluation import (
    draw,
    embedded_pipeline,
    evaluation_scenes,
    overlap,
    prompt_scores,
)
from pixart_delta_core.pipeline.cli import SEED
from pixart_delta_core.pipeline.images import from_pil, to_pil
from pixart_delta_core.vae.autoencoder import load_vae
from pixart_delta_core.world.judge import Scores
from pixart_delta_core.world.render import render
from pixart_delta_core.world.scenes import Scene, cell_centre

RUNS = {
    "teacher, dpm_solver++ 20 steps, guidance 4.5": ("shapes-teacher", "dpm_solver++", 20, 4.5, {}),
    "teacher, dpm_solver++ 4 steps, guidance 4.5": ("shapes-teacher", "dpm_solver++", 4, 4.5, {}),
    # the student's own sampler on the undistilled teacher: what the distillation adds beyond the sampler
    "teacher, lcm sampler 4 steps, no guidance": ("shapes-teacher", "lcm", 4, 1.0, {}),
    "teacher, lcm sampler 2 steps, no guidance": ("shapes-teacher", "lcm", 2, 1.0, {}),
    # each model under the other's sampler, with guidance: what the command line's warnings quote
    "teacher, lcm sampler 4 steps, guidance 4.5": ("shapes-teacher", "lcm", 4, 4.5, {}),
    "lcm student, dpm_solver++ 14 steps, guidance 4.5": ("shapes-lcm", "dpm_solver++", 14, 4.5, {}),
    "lcm student, 4 steps": ("shapes-lcm", "lcm", 4, 1.0, {}),
    "lcm student, 2 steps": ("shapes-lcm", "lcm", 2, 1.0, {}),
    "lcm student, 1 step": ("shapes-lcm", "lcm", 1, 1.0, {}),
    "lcm student, 4 steps, int8 T5": ("shapes-lcm", "lcm", 4, 1.0, {"t5_quantization": "int8"}),
    "lcm student, 4 steps, int8 transformer": ("shapes-lcm", "lcm", 4, 1.0, {"quantization": "int8"}),
}


def round_trip(scenes: list, autoencoder: str) -> list:
    """The scenes' own pictures through the autoencoder (encode, decode)."""
    vae = load_vae(embedded_path(autoencoder))
    with torch.no_grad():
        return to_pil(vae.decode(vae.encode(from_pil([render(scene) for scene in scenes]))))


# 0 skips the runs it counts for
PROMPT_COUNT = whole_number("prompts", least=0)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prompts", type=PROMPT_COUNT, default=100, help="held-out prompts; 0 skips all but the ControlNet"
    )
    parser.add_argument(
        "--control-prompts", type=PROMPT_COUNT, default=100, help="prompts for the ControlNet; 0 skips it"
    )
    parser.add_argument("--teacher", default="shapes-teacher", help="a teacher file instead of the shipped one")
    parser.add_argument("--autoencoder", default="shapes-taesd", help="a TAESD file instead of the shipped one")
    parser.add_argument("--seed", type=SEED, default=0, help="the first batch's seed (default 0)")
    args = parser.parse_args(argv)
    if args.prompts == args.control_prompts == 0:
        parser.error("nothing to measure: --prompts and --control-prompts are both 0")
    return args


def score_fields(scores: Scores) -> dict[str, object]:
    """A row's scores: the fraction right per attribute, then per asked kind ("kinds"), rounded to 0.001."""
    kinds = {k: round(v, 3) for k, v in scores.kind_fractions().items()}
    return {**{k: round(v, 3) for k, v in scores.fractions().items()}, "kinds": kinds}


def measured(transformer: str, args: argparse.Namespace) -> str:
    """The transformer a run measures: ``--teacher`` in place of the shipped teacher."""
    return args.teacher if transformer == "shapes-teacher" else transformer


def prompt_runs(scenes: list[Scene], args: argparse.Namespace) -> None:
    """The autoencoder's round trip, then each of ``RUNS``: one JSON line each."""
    scores = prompt_scores(round_trip(scenes, args.autoencoder), scenes)
    print(json.dumps({"run": "autoencoder round trip of the world's pictures", "prompts": len(scenes),
                      **score_fields(scores)}), flush=True)  # fmt: skip
    for name, (transformer, sampler, steps, guidance, options) in RUNS.items():
        started = time.perf_counter()
        transformer = measured(transformer, args)
        pipeline = embedded_pipeline(transformer, args.autoencoder, **options)
        images = draw(pipeline, scenes, args.seed, sampler=sampler, steps=steps, guidance=guidance)
        scores = prompt_scores(images, scenes)
        print(json.dumps({"run": name, "prompts": len(scenes), **score_fields(scores),
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)  # fmt: skip


# The ControlNet under the reference's setting (guidance 4.5) and unguided: guidance scales the prompt's pull on
# the layout by 4.5, while the ControlNet's residual, the same in both branches, is not scaled.
CONTROL_RUNS = {
    "teacher, dpm_solver++ 14 steps, guidance 4.5": ("shapes-teacher", "dpm_solver++", 14, 4.5),
    "teacher, dpm_solver++ 14 steps, no guidance": ("shapes-teacher", "dpm_solver++", 14, 1.0),
    "lcm student, 4 steps": ("shapes-lcm", "lcm", 4, 1.0),
}


def at_cell_centres(scene: Scene) -> Scene:
    """``scene`` with each shape at its grid cell's centre: all its caption says of where the shapes are."""
    return replace(
        scene, shapes=tuple(replace(s, x=cell_centre(s.place)[0], y=cell_centre(s.place)[1]) for s in scene.shapes)
    )


def control_runs(control: list[Scene], args: argparse.Namespace) -> None:
    """The overlap's bounds in the world itself (its exact pictures; the same shapes at their cells' centres, the
    most a model that follows the caption alone can reach), then each of ``CONTROL_RUNS`` with the ControlNet over
    the edge maps and without it, on the same prompts and seeds: one JSON line each."""
    exact = overlap([render(s) for s in control], control)
    centred = overlap([render(at_cell_centres(s)) for s in control], control)
    print(json.dumps({"run": "the world's own pictures", "prompts": len(control), "mean_iou": round(exact.mean, 3),
                      "shapes_at_cell_centres": round(centred.mean, 3)}), flush=True)  # fmt: skip
    for name, (transformer, sampler, steps, guidance) in CONTROL_RUNS.items():
        started = time.perf_counter()
        transformer = measured(transformer, args)
        settings = {"sampler": sampler, "steps": steps, "guidance": guidance}
        controlled = embedded_pipeline(transformer, args.autoencoder, controlnet="shapes-controlnet")
        images = draw(controlled, control, args.seed, control=True, **settings)
        alone = overlap(draw(embedded_pipeline(transformer, args.autoencoder), control, args.seed, **settings), control)
        with_it = overlap(images, control)
        print(json.dumps({"run": f"{name}, with the controlnet", "prompts": len(control),
                          "mean_iou": round(with_it.mean, 3), "without_it": round(alone.mean, 3),
                          "pictures_closer": with_it.closer_than(alone), **score_fields(prompt_scores(images, control)),
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    scenes = evaluation_scenes(max(args.prompts, args.control_prompts))  # its first n: evaluation_scenes(n)
    parts = (
        (args.prompts, prompt_runs, "--prompts 0: skipped all but the ControlNet's runs"),
        (args.control_prompts, control_runs, "--control-prompts 0: skipped the ControlNet's runs"),
    )
    for count, runs, skipped in parts:
        if count:
            runs(scenes[:count], args)
        else:
            print(skipped, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
