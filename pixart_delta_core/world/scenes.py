"""Scenes of the shapes world and their captions: one or more coloured shapes at named places on a background.

A scene is drawn from a seed (``sample_scene``), so a data set is reproducible from its seeds. The
palette, kinds, sizes and the 3 x 3 grid of named places are the world's rules; the renderer
(``render.py``) draws them and the judge (``judge.py``) reads pictures back with the same rules.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

IMAGE_SIZE = 128  # px per side of every picture of the world
DRAWN_SIDES = (32, 2048, 8)  # px a side the Shapes Scene node and `scene` draw: the least, the most, their step

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "white": (235, 235, 235),
    "gray": (128, 128, 128),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (245, 215, 40),
    "purple": (150, 60, 190),
    "orange": (245, 135, 25),
    "cyan": (40, 205, 215),
}
KINDS = ("circle", "square", "triangle", "star")
SIZES: dict[str, float] = {"small": 0.21, "large": 0.3}  # the shape's bounding square, as a fraction of the side
PLACES = (
    ("top left", "at the top left"),
    ("top", "at the top"),
    ("top right", "at the top right"),
    ("left", "on the left"),
    ("center", "in the center"),
    ("right", "on the right"),
    ("bottom left", "at the bottom left"),
    ("bottom", "at the bottom"),
    ("bottom right", "at the bottom right"),
)  # row by row: place i is in row i // 3, column i % 3
GRAMMAR = (
    '"a SIZE COLOUR KIND PLACE" joined by " and ", then ", on a BACKGROUND background" (SIZE: '
    f"{', '.join(SIZES)}; COLOUR: {', '.join(COLOURS)}; KIND: {', '.join(KINDS)}; PLACE: "
    f"{', '.join(p[1] for p in PLACES)}; BACKGROUND: {', '.join(BACKGROUNDS)})"
)  # of captions: what Scene.caption() writes and judge.parse_caption reads
# The caption the Shapes Scene node and `scene` draw unless given another
DEFAULT_CAPTION = "a large red circle in the center and a small yellow star at the top right, on a black background"
MARGIN = 2.0  # px kept free between a shape and the edge of its grid cell


@dataclass(frozen=True)
class Shape:
    """One shape: its attributes and where it is drawn (centre in px, side of its bounding square in px)."""

    kind: str
    colour: str
    size: str
    place: int  # index into PLACES
    x: float
    y: float
    side: float

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.kind} {PLACES[self.place][1]}"


@dataclass(frozen=True)
class Scene:
    """A background and its shapes, each in its own grid cell."""

    background: str
    shapes: tuple[Shape, ...]

    def caption(self) -> str:
        """The scene's exact caption, e.g. "a large red circle at the top left, on a black background"."""
        return f"{' and '.join(s.phrase() for s in self.shapes)}, on a {self.background} background"


def cell_centre(place: int, image_size: int = IMAGE_SIZE) -> tuple[float, float]:
    """The centre (x, y) in px of grid cell ``place``."""
    cell = image_size / 3
    return (place % 3 + 0.5) * cell, (place // 3 + 0.5) * cell


def place_of(x: float, y: float, image_size: int = IMAGE_SIZE) -> int:
    """The grid cell holding the point (x, y) in px."""
    column = min(2, max(0, int(3 * x / image_size)))
    row = min(2, max(0, int(3 * y / image_size)))
    return 3 * row + column


# A scene's seed: 0 to generate's largest noise seed (sampling.choices.MAX_SEED; a test says so), so that a scene's
# seed is a number every part of the pack takes, and a scene's file name (its seed) is at most 20 digits. Python's
# random takes any integer, but a seed of 250 digits made a name no file system holds, and -5 the scene of 5.
MAX_SEED = 2**64 - 1


def sample_scene(seed: int, max_shapes: int = 2, jitter: bool = True) -> Scene:
    """The scene of ``seed``: 1 to ``max_shapes`` shapes in distinct cells, each moved at most as far
    inside its cell as its size allows (``jitter``), on a background. Positions are in px of ``IMAGE_SIZE``.
    """
    rng = random.Random(seed)
    background = rng.choice(sorted(BACKGROUNDS))
    places = sorted(rng.sample(range(len(PLACES)), rng.randint(1, max_shapes)))
    shapes = []
    for place in places:
        size = rng.choice(sorted(SIZES))
        side = SIZES[size] * IMAGE_SIZE
        room = max(0.0, (IMAGE_SIZE / 3 - side) / 2 - MARGIN) if jitter else 0.0
        cx, cy = cell_centre(place)
        x, y = cx + rng.uniform(-room, room), cy + rng.uniform(-room, room)
        shapes.append(Shape(rng.choice(KINDS), rng.choice(sorted(COLOURS)), size, place, x, y, side))
    return Scene(background, tuple(shapes))
