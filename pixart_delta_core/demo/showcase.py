"""The quick start's demo: the embedded model draws held-out prompts of the shapes world, and the judge
says whether each picture shows what its prompt asks.

The LCM student draws every prompt in 4 steps without guidance; the ControlNet then draws one prompt over
the edge map of its scene. Everything runs on the files in ``embedded_model/``, through the same pipeline
as real checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from ..pipeline.generation import Control, PixArtPipeline
from ..world.judge import Verdict, foreground_iou, held_out_scenes, judge, parse_caption
from ..world.reading import read_picture
from ..world.render import edge_map
from .embedded import PICTURE, TRAINING_SCENES, embedded_path

TILE = 256  # px per picture in the grid (the model draws 128 px)
LABEL = 28  # px of verdict text under each picture


@dataclass(frozen=True)
class Shown:
    """One picture of the demo, what it was asked for, and the judge's word (``verdict`` None: an input shown
    beside the pictures, such as the ControlNet's edge map, which is not judged)."""

    title: str
    prompt: str
    image: Image.Image
    verdict: Verdict | None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict is not None and self.verdict.ok

    def judgement(self) -> str:
        """The judge's line for a picture ("ok" or what is wrong), the note for an input."""
        return self.note if self.verdict is None else self.verdict.line()


def run_demo(prompts: int = 6, seed: int = 0, device: str = "auto") -> list[Shown]:
    """Draw ``prompts`` held-out prompts with the LCM student (4 steps) and one with the ControlNet."""
    scenes = held_out_scenes(prompts + 1, TRAINING_SCENES)
    captions = [scene.caption() for scene in scenes[:prompts]]
    models = {"t5": embedded_path("shapes-t5"), "vae": embedded_path("shapes-taesd")}
    student = PixArtPipeline(embedded_path("shapes-lcm"), device=device, dtype="fp32", **models)
    images = student(captions, sampler="lcm", steps=4, seed=seed, **PICTURE).images
    shown = [
        Shown("LCM, 4 steps", caption, image, judge(parse_caption(caption), read_picture(image)))
        for caption, image in zip(captions, images, strict=True)
    ]
    scene = scenes[prompts]
    edges = edge_map(scene)
    teacher = PixArtPipeline(
        embedded_path("shapes-teacher"), controlnet=embedded_path("shapes-controlnet"), device=device, dtype="fp32",
        **models,
    )  # fmt: skip
    settings = {"sampler": "dpm_solver++", "steps": 14, "seed": seed, **PICTURE}
    image = teacher(scene.caption(), control=Control(edges), **settings).images[0]
    verdict = judge(parse_caption(scene.caption()), read_picture(image))
    iou = f"shapes on the edge map's: IoU {foreground_iou(image, scene):.2f}"
    shown += [Shown("edge map", scene.caption(), edges, None, "the ControlNet's input"),
              Shown("ControlNet", scene.caption(), image, verdict, iou)]  # fmt: skip
    return shown


def demo_grid(shown: list[Shown]) -> Image.Image:
    """The pictures side by side, each with its title and the judge's verdict under it."""
    grid = Image.new("RGB", (TILE * len(shown), TILE + 2 * LABEL), "white")
    draw = ImageDraw.Draw(grid)
    for i, item in enumerate(shown):
        grid.paste(item.image.convert("RGB").resize((TILE, TILE), Image.Resampling.LANCZOS), (i * TILE, 0))
        word = item.judgement() if item.verdict is None or item.ok else "judge: " + item.judgement()
        draw.text((i * TILE + 4, TILE + 4), item.title, fill="black")
        colour = "dimgray" if item.verdict is None else "darkgreen" if item.ok else "darkred"
        draw.text((i * TILE + 4, TILE + 4 + LABEL), word[:40], fill=colour)
    return grid


def verdict_lines(shown: list[Shown]) -> list[str]:
    """What the demo prints of each picture: a blank line, its title and prompt, then the judge's verdict and
    any note (an input, which is not judged: its note)."""
    lines: list[str] = []
    for item in shown:
        lines += ["", f"[{item.title}] {item.prompt}"]
        if item.verdict is None:
            lines.append(f"  {item.note} (not judged)")
        else:
            lines += [f"  judge: {item.judgement()}", *([f"  {item.note}"] if item.note else [])]
    return lines


def write_demo(out: Path, device: str = "auto") -> list[Shown]:
    """Run the demo and save its grid at ``out``; returns what it showed."""
    shown = run_demo(device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    demo_grid(shown).save(out)
    return shown
