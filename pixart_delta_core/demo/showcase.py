"""The quick start's demo: the embedded model draws held-out prompts of the shapes world, and the judge
says whether each picture shows what its prompt asks.

The LCM student draws every prompt in 4 steps without guidance, the last one over the edge map of its scene
with the ControlNet. Everything runs on the files in ``embedded_model/``, through the same pipeline
as real checkpoints.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..devices import device_option
from ..pipeline.generation import Control, PixArtPipeline
from ..pipeline.outputs import check_output, make_output_folder
from ..world.judge import Verdict, foreground_iou, held_out_scenes, judge, parse_caption
from ..world.reading import read_picture
from ..world.render import edge_map
from .embedded import PICTURE, TRAINING_SCENES
from .embedded_files import FOLDER, embedded_path

TILE = 256  # px per picture in the grid (the model draws 128 px)
PAD = 4  # px between a caption's text and its tile's edges


@dataclass(frozen=True)
class Shown:
    """One picture of the demo, what it was asked for (a prompt of the shapes world), and the judge's word
    (``verdict`` None: an input shown beside the pictures, such as the ControlNet's edge map, which is not
    judged)."""

    title: str
    prompt: str
    image: Image.Image
    verdict: Verdict | None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict is not None and self.verdict.ok


def run_demo(prompts: int = 6, seed: int = 0, device: str = "auto") -> list[Shown]:
    """Draw ``prompts`` held-out prompts with the LCM student (4 steps), then one more over its scene's edge map
    with the ControlNet on the student (the same sampler and steps)."""
    scenes = held_out_scenes(prompts + 1, TRAINING_SCENES)
    captions = [scene.caption() for scene in scenes[:prompts]]
    student = PixArtPipeline(
        embedded_path("shapes-lcm"), controlnet=embedded_path("shapes-controlnet"), t5=embedded_path("shapes-t5"),
        vae=embedded_path("shapes-taesd"), device=device, dtype="fp32",
    )  # fmt: skip
    settings = {"sampler": "lcm", "steps": 4, "seed": seed, **PICTURE}
    images = student(captions, **settings).images
    shown = [
        Shown("LCM, 4 steps", caption, image, judge(parse_caption(caption), read_picture(image)))
        for caption, image in zip(captions, images, strict=True)
    ]
    scene = scenes[prompts]
    edges = edge_map(scene)
    image = student(scene.caption(), control=Control(edges), **settings).images[0]
    verdict = judge(parse_caption(scene.caption()), read_picture(image))
    iou = f"overlap of the shapes with the edge map's (IoU): {foreground_iou(image, scene):.2f}"
    shown += [Shown("edge map", scene.caption(), edges, None, "the ControlNet's input"),
              Shown("ControlNet, LCM 4 steps", scene.caption(), image, verdict, iou)]  # fmt: skip
    return shown


def wrapped(text: str, fits: Callable[[str], bool]) -> list[str]:
    """``text`` over lines that each ``fits``, broken between words only (a word too long for a line has its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and fits(joined := f"{lines[-1]} {word}"):
            lines[-1] = joined
        else:
            lines.append(word)
    return lines


def judged(verdict: Verdict) -> str:
    """The judge's word in full: "PASS (everything as asked)", or "FAIL (...)" with each wrong attribute, what was
    asked and what was found (``Verdict.line``)."""
    return "PASS (everything as asked)" if verdict.ok else f"FAIL ({verdict.line()})"


def caption_lines(item: Shown, fits: Callable[[str], bool]) -> list[tuple[str, str]]:
    """The (line, colour) under a picture, each paragraph wrapped to lines that ``fits``, in full however many
    lines that takes: its title, its prompt, the judge's verdict (``judged``) and its note; an input, which is
    not judged, its note instead of a verdict."""
    told = [(item.title, "black"), (f"prompt: {item.prompt}", "black"), *_said(item)]
    return [(line, colour) for text, colour in told for line in wrapped(text, fits)]


def _said(item: Shown) -> list[tuple[str, str]]:
    """(text, colour) of what is said of a picture, on its tile and in the terminal: the judge's verdict
    (``judged``) and its note; an input, which is not judged, its note."""
    if item.verdict is None:
        return [(f"{item.note} (not judged)", "dimgray")]
    verdict = (f"judge: {judged(item.verdict)}", "darkgreen" if item.ok else "darkred")
    return [verdict, *([(item.note, "dimgray")] if item.note else [])]


def demo_grid(shown: list[Shown]) -> Image.Image:
    """The pictures side by side, each with its caption under it (title, prompt, the judge's verdict) in a band
    as tall as the longest caption: the grid's height varies with its captions."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = measure.textbbox((0, 0), "Ag", font=font)[3] + 3

    def fits(line: str) -> bool:
        return measure.textlength(line, font=font) <= TILE - 2 * PAD

    captions = [caption_lines(item, fits) for item in shown]
    band = 2 * PAD + line_height * max(map(len, captions))
    grid = Image.new("RGB", (TILE * len(shown), TILE + band), "white")
    draw = ImageDraw.Draw(grid)
    for i, (item, caption) in enumerate(zip(shown, captions, strict=True)):
        grid.paste(item.image.convert("RGB").resize((TILE, TILE), Image.Resampling.LANCZOS), (i * TILE, 0))
        for row, (line, colour) in enumerate(caption):
            draw.text((i * TILE + PAD, TILE + PAD + row * line_height), line, fill=colour, font=font)
    return grid


def from_here(path: str | Path) -> str:
    """``path`` as the user can give it where they are: relative to the current folder when under it, else
    absolute (``scripts/dev.py`` runs the demo in the folder it was run from)."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(os.getcwd()))
    except ValueError:
        return str(absolute)


def introduction() -> list[str]:
    """What the demo prints before it draws: what the embedded model is and what the demo does."""
    return [
        "The embedded model: a small PixArt-δ trained by this pack on its procedural shapes world",
        f"(model card: {from_here(FOLDER / 'MODEL_CARD.md')}). Held-out prompts, the LCM student in 4 steps, then",
        "one more with the ControlNet over an edge map; the judge reads each back and says if it follows its prompt.",
        "A short training run: backgrounds, places and colours mostly right, kinds 4 in 5 (stars the worst).",
    ]


def next_steps(out: Path, replaced: bool = False) -> list[str]:
    """What the demo prints after its verdicts: where it wrote its grid ``out`` (and whether it ``replaced`` an
    earlier file), where the models are, and commands to try next with the interpreter that has the pack (the
    teacher, then the ControlNet over a scene's edge map); every path as it works from the current folder."""
    python = from_here(sys.executable)
    python = python if os.sep in python else os.path.join(".", python)  # a bare name would be looked up in PATH
    run = f"  {shlex.quote(python)} -m pixart_delta_core"
    star, scene, edges, steered = (
        shlex.quote(from_here(out.parent / name))
        for name in ("star.png", "scene.png", "scene-edges.png", "steered.png")
    )
    prompt = '"a large red star in the center, on a white background"'
    wrote = f"wrote {from_here(out)}{' (replaced an earlier file)' if replaced else ''}"
    return [
        f"{wrote}. The models are in {from_here(FOLDER)}; the command line takes them by name. Next:",
        f"{run} info shapes-teacher shapes-lcm shapes-controlnet shapes-taesd shapes-t5",
        f"{run} generate --transformer shapes-teacher --t5 shapes-t5 --vae shapes-taesd \\",
        f"      --prompt {prompt} --sampler dpm_solver++ \\",
        f"      --out {star}",
        f"{run} judge {star}",
        f"{run} scene --caption {prompt} \\",
        f"      --out {scene}",
        f"{run} generate --transformer shapes-lcm --t5 shapes-t5 --vae shapes-taesd \\",
        f"      --controlnet shapes-controlnet --control-image {edges} --sampler lcm --steps 4 \\",
        f"      --prompt {prompt} --out {steered}",
        f"{run} judge {steered} --overlap",
    ]


def verdict_lines(shown: list[Shown]) -> list[str]:
    """What the demo prints of each picture: a blank line, its title and prompt, then the judge's verdict and
    any note (an input, which is not judged: its note)."""
    lines: list[str] = []
    for item in shown:
        lines += ["", f"[{item.title}] {item.prompt}", *(f"  {text}" for text, _ in _said(item))]
    return lines


def check_demo(out: Path, device: str = "auto") -> None:
    """Refuse, before any work, a grid ``out`` that cannot be written or a ``device`` that cannot be used
    (InputError)."""
    device_option(device)
    check_output(out)


def write_demo(out: Path, device: str = "auto", seed: int = 0) -> list[Shown]:
    """Run the demo from noise ``seed`` and save its grid at ``out`` (refused first, as ``generate`` refuses its own:
    InputError when it cannot be written, or the device cannot be used; the grid's folder is made when the grid is
    saved); returns what it showed."""
    check_demo(out, device)
    shown = run_demo(seed=seed, device=device)
    make_output_folder(out)
    demo_grid(shown).save(out)
    return shown
