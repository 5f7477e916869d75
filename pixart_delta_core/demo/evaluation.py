"""Scoring the embedded model with the shapes world's judge: prompt-following over held-out prompts, and how
well the ControlNet puts shapes on its edge maps. The model card's figures and the tests' thresholds come
from here, with fixed prompts and seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..pipeline.generation import Control, PixArtPipeline
from ..world.judge import Scores, foreground_iou, held_out_scenes, judge, parse_caption
from ..world.reading import read_picture
from ..world.render import edge_map
from ..world.scenes import Scene
from .embedded import PICTURE, TRAINING_SCENES
from .embedded_files import embedded_path

BATCH = 25  # prompts drawn at once


def evaluation_scenes(count: int = 100) -> list[Scene]:
    """The held-out scenes every score is measured on (fixed seeds, no caption seen in training)."""
    return held_out_scenes(count, TRAINING_SCENES)


def embedded_pipeline(transformer: str = "shapes-lcm", vae: str = "shapes-taesd", **options: Any) -> PixArtPipeline:
    """A pipeline over the embedded files (names, or paths of other files; fp32 on the CPU unless ``options``
    say otherwise)."""
    options = {"device": "cpu", "dtype": "fp32", "keep_loaded": True, **options}
    if options.get("controlnet") is not None:
        options["controlnet"] = embedded_path(options["controlnet"])
    return PixArtPipeline(embedded_path(transformer), embedded_path("shapes-t5"), embedded_path(vae), **options)


def edge_maps(scenes: list[Scene]) -> torch.Tensor:
    """The scenes' edge maps as one control batch [B, 3, 128, 128] in [0, 1]."""
    return torch.stack([torch.from_numpy(np.array(edge_map(s))).permute(2, 0, 1).float() / 255 for s in scenes])


def draw(
    pipeline: PixArtPipeline, scenes: list[Scene], seed: int = 0, control: bool = False, **sampling: Any
) -> list[Image.Image]:
    """One picture per scene's caption, at the models' 128 px, ``BATCH`` at a time (batch ``i`` from seed
    ``seed + i``, so runs with and without ``control`` start from the same noise); ``control``: each picture
    over its scene's edge map."""
    sampling = {**PICTURE, **sampling}
    images: list[Image.Image] = []
    for start in range(0, len(scenes), BATCH):
        part = scenes[start : start + BATCH]
        steer = {"control": Control(edge_maps(part))} if control else {}
        images += pipeline([s.caption() for s in part], seed=seed + start // BATCH, **steer, **sampling).images
    return images


def prompt_scores(images: list[Image.Image], scenes: list[Scene]) -> Scores:
    """The judge's scores of ``images`` against their scenes' captions."""
    scores = Scores()
    for image, scene in zip(images, scenes, strict=True):
        scores.add(judge(parse_caption(scene.caption()), read_picture(image)))
    return scores


@dataclass(frozen=True)
class Overlap:
    """How much the pictures' shapes cover their scenes' shapes: IoU of the filled regions, per picture."""

    ious: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.ious))

    def closer_than(self, other: Overlap) -> int:
        """In how many pictures the shapes overlap their scene's more than in ``other`` (the same scenes, in order)."""
        return sum(ours > theirs for ours, theirs in zip(self.ious, other.ious, strict=True))


def overlap(images: list[Image.Image], scenes: list[Scene]) -> Overlap:
    return Overlap(tuple(foreground_iou(image, scene) for image, scene in zip(images, scenes, strict=True)))
