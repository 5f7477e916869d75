"""The shapes world's judge: does a picture show what its prompt asks?

``parse_caption`` reads a prompt of the world's grammar back into a scene, ``read_picture`` (reading.py)
reads a picture, ``judge`` compares the two attribute by attribute, ``Scores`` sums verdicts over many
pictures; ``foreground_iou`` scores how well generated shapes sit on a scene's regions (the ControlNet's
task) and ``held_out_scenes`` gives evaluation scenes whose captions no training scene has.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..errors import InputError
from .reading import FoundShape, Reading, picture_pixels, read_background
from .render import filled_mask
from .scenes import (
    BACKGROUNDS,
    COLOURS,
    GRAMMAR,
    IMAGE_SIZE,
    KINDS,
    PLACES,
    SIZES,
    Scene,
    Shape,
    cell_centre,
    sample_scene,
)

SHAPE_ATTRIBUTES = ("colour", "kind", "position", "size")  # judged per prompted shape
PICTURE_ATTRIBUTES = ("background", "count")  # judged per picture


def _parse_phrase(phrase: str, number: int) -> Shape:
    """One "a SIZE COLOUR KIND PLACE" phrase as a shape at its cell's centre; InputError naming the bad word."""
    words = phrase.split(" ", 4)
    places = tuple(p[1] for p in PLACES)
    expected = (("a", ("a",)), ("SIZE", tuple(SIZES)), ("COLOUR", tuple(COLOURS)), ("KIND", KINDS), ("PLACE", places))
    for index, (what, allowed) in enumerate(expected):
        if index >= len(words) or words[index] not in allowed:
            found = repr(words[index]) if index < len(words) else "nothing more"
            raise InputError(
                f"shape {number} ({phrase!r}): expected {what} ({', '.join(allowed)}), found {found} (a shape is "
                '"a SIZE COLOUR KIND PLACE")'
            )
    place = places.index(words[4])
    x, y = cell_centre(place)
    return Shape(words[3], words[2], words[1], place, x, y, SIZES[words[1]] * IMAGE_SIZE)


def parse_caption(text: str) -> Scene:
    """A prompt of the world's grammar (what ``Scene.caption()`` writes; case and surrounding space aside) as the
    scene it asks for: its shapes at the centres of their cells, in the prompt's order.

    Raises InputError saying what was expected and what was found for a prompt outside the grammar, and for
    two shapes asked at one place (the world holds one shape a cell).
    """
    cleaned = " ".join(text.lower().split())
    match = re.fullmatch(r"(.+), on an? (\S+) background\.?", cleaned)
    if match is None:
        raise InputError(f"expected a prompt of the shapes world, {GRAMMAR}; found {text!r}")
    if match[2] not in BACKGROUNDS:
        raise InputError(f"expected BACKGROUND ({', '.join(BACKGROUNDS)}), found {match[2]!r} in {text!r}")
    try:
        shapes = tuple(_parse_phrase(phrase, n) for n, phrase in enumerate(match[1].split(" and "), 1))
    except InputError as err:
        raise InputError(f"{err}, in {text!r}") from None
    places = [s.place for s in shapes]
    for place in places:
        if places.count(place) > 1:
            raise InputError(f"expected one shape a place, found {places.count(place)} {PLACES[place][1]} in {text!r}")
    return Scene(match[2], shapes)


def scene_for(caption: str, seed: int = 0) -> Scene:
    """The scene ``caption`` asks for (``parse_caption``: shapes at their cells' centres), or for a blank caption
    the world's scene of ``seed`` (``sample_scene``). Raises InputError for a caption outside the grammar."""
    return parse_caption(caption) if caption.strip() else sample_scene(seed)


def _described(shape: Shape) -> str:
    """E.g. "small red circle at the top left": a shape's phrase without its article, for verdicts."""
    return f"{shape.size} {shape.colour} {shape.kind} {PLACES[shape.place][1]}"


@dataclass(frozen=True, eq=False)
class ShapeVerdict:
    """One prompted shape, the found shape matched to it (None: none left) and which attributes are right."""

    asked: Shape
    found: FoundShape | None
    right: dict[str, bool]  # SHAPE_ATTRIBUTES -> right

    def line(self) -> str:
        """Empty when all is right; else e.g. "colour: asked small red circle at the top left, found small orange
        circle at the top left"."""
        wrong = [a for a in SHAPE_ATTRIBUTES if not self.right[a]]
        if not wrong:
            return ""
        found = "nothing" if self.found is None else _described(self.found.as_shape())
        return f"{', '.join(wrong)}: asked {_described(self.asked)}, found {found}"


@dataclass(frozen=True, eq=False)
class Verdict:
    """A picture judged against its prompt: per picture attributes, per prompted shape attributes, the extras."""

    asked: Scene
    reading: Reading
    background: bool
    count: bool
    shapes: tuple[ShapeVerdict, ...]
    extra: tuple[FoundShape, ...]  # found shapes no prompted shape was matched to

    @property
    def ok(self) -> bool:
        """Every attribute right."""
        return self.background and self.count and all(all(s.right.values()) for s in self.shapes)

    def line(self) -> str:
        """The verdict in one line: ok, or each wrong attribute with what was asked and found, joined by "; "."""
        background = f"background: asked {self.asked.background}, found {self.reading.background}"
        parts = [] if self.background else [background]
        parts += [line for s in self.shapes if (line := s.line())]
        if not self.count:
            extra = f" (extra: {', '.join(_described(s.as_shape()) for s in self.extra)})" if self.extra else ""
            parts.append(f"count: asked {len(self.asked.shapes)}, found {len(self.reading.shapes)}{extra}")
        return "; ".join(parts) or "ok"

    def marks(self) -> list[tuple[str, bool]]:
        """(attribute, right) for the picture's attributes, then for each prompted shape's."""
        marks = [("background", self.background), ("count", self.count)]
        return marks + [(a, s.right[a]) for s in self.shapes for a in SHAPE_ATTRIBUTES]

    def as_dict(self) -> dict[str, object]:
        """The verdict as JSON-ready data: its line, what the picture reads as, and each attribute's mark."""
        shapes = [
            {"asked": s.asked.phrase(), "found": s.found and s.found.description(), "right": s.right}
            for s in self.shapes
        ]
        marks = {"background": self.background, "count": self.count}
        return {"verdict": self.line(), "reads": self.reading.caption(), **marks, "shapes": shapes}


def _preference(asked: Shape, found: FoundShape) -> tuple[int, float]:
    """How well a found shape suits a prompted one (higher first): same place, then colour, then kind; then
    the nearer to the prompted cell's centre."""
    score = 4 * (found.place == asked.place) + 2 * (found.colour == asked.colour) + (found.kind == asked.kind)
    x, y = cell_centre(asked.place, found.mask.shape[0])
    return score, -float(np.hypot(found.x - x, found.y - y))


def judge(asked: Scene, reading: Reading) -> Verdict:
    """Judge a picture's reading against the scene its prompt asks (``parse_caption``). Each prompted shape is
    matched to at most one found shape, the best-suited pairs first (same place, then colour, then kind);
    a prompted shape left without one is wrong in every attribute. Position is right when the found shape's
    centroid is in the asked grid cell; count when as many shapes are found as asked."""
    pairs = sorted(
        ((i, j) for i in range(len(asked.shapes)) for j in range(len(reading.shapes))),
        key=lambda ij: _preference(asked.shapes[ij[0]], reading.shapes[ij[1]]),
        reverse=True,
    )
    matched: dict[int, int] = {}
    for i, j in pairs:
        if i not in matched and j not in matched.values():
            matched[i] = j
    verdicts = []
    for i, shape in enumerate(asked.shapes):
        found = reading.shapes[matched[i]] if i in matched else None
        right = dict.fromkeys(SHAPE_ATTRIBUTES, False)
        if found is not None:
            right = {
                "colour": found.colour == shape.colour,
                "kind": found.kind == shape.kind,
                "position": found.place == shape.place,
                "size": found.size == shape.size,
            }
        verdicts.append(ShapeVerdict(shape, found, right))
    extra = tuple(s for j, s in enumerate(reading.shapes) if j not in matched.values())
    background, count = asked.background == reading.background, len(asked.shapes) == len(reading.shapes)
    return Verdict(asked, reading, background, count, tuple(verdicts), extra)


@dataclass
class Scores:
    """Verdicts summed over many pictures: per attribute, how many were right of how many judged (shape
    attributes count prompted shapes, background and count count pictures; "picture": pictures all right)."""

    right: dict[str, int] = field(default_factory=dict)
    judged: dict[str, int] = field(default_factory=dict)
    asked_kinds: dict[str, list[int]] = field(default_factory=dict)  # asked kind -> [read as it, asked]

    def add(self, verdict: Verdict) -> None:
        """Count one picture's verdict."""
        for attribute, right in [*verdict.marks(), ("picture", verdict.ok)]:
            self.right[attribute] = self.right.get(attribute, 0) + int(right)
            self.judged[attribute] = self.judged.get(attribute, 0) + 1
        for shape in verdict.shapes:
            tally = self.asked_kinds.setdefault(shape.asked.kind, [0, 0])
            tally[0] += int(shape.right["kind"])
            tally[1] += 1

    def fractions(self) -> dict[str, float]:
        """The fraction right per attribute (0..1), for those judged at least once."""
        order = (*PICTURE_ATTRIBUTES, *SHAPE_ATTRIBUTES, "picture")
        return {a: self.right[a] / self.judged[a] for a in order if self.judged.get(a)}

    def kind_fractions(self) -> dict[str, float]:
        """Per asked kind (KINDS' order, those asked at least once), the fraction of its prompted shapes read as
        that kind (0..1): which kinds a model draws, where "kind" alone averages them."""
        return {k: self.asked_kinds[k][0] / self.asked_kinds[k][1] for k in KINDS if k in self.asked_kinds}

    def as_dict(self) -> dict[str, dict[str, float | int]]:
        """attribute -> {"fraction", "right", "judged"}: what ``to_json`` writes."""
        fractions = self.fractions().items()
        return {a: {"fraction": f, "right": self.right[a], "judged": self.judged[a]} for a, f in fractions}

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    def table(self) -> str:
        """A small table: one row per attribute with its percentage right and counts."""
        rows = [f"{'attribute':<11}{'right':>8}  of"]
        rows += [f"{a:<11}{100 * f:>7.1f}%  {self.right[a]}/{self.judged[a]}" for a, f in self.fractions().items()]
        return "\n".join(rows)


def foreground_iou(image: Image.Image | np.ndarray, scene_or_mask: Scene | Image.Image | np.ndarray) -> float:
    """IoU (0..1) of a picture's foreground (its pixels far from its background, as ``read_picture`` finds them)
    with a scene's filled regions (``filled_mask`` at the picture's size) or with a given mask (a mode "L" image,
    inside > 127, or a bool array (H, W) the picture's size). Raises InputError for sizes that differ."""
    pixels = picture_pixels(image)
    foreground = read_background(pixels)[2]
    if isinstance(scene_or_mask, Scene):
        regions = np.asarray(filled_mask(scene_or_mask, pixels.shape[0])) > 127
    elif isinstance(scene_or_mask, Image.Image):
        regions = np.asarray(scene_or_mask.convert("L")) > 127
    else:
        regions = np.asarray(scene_or_mask, dtype=bool)
    if regions.shape != foreground.shape:
        raise InputError(f"expected a mask of the picture's size {foreground.shape}, found {regions.shape}")
    union = np.logical_or(foreground, regions).sum()
    return float(np.logical_and(foreground, regions).sum() / union) if union else 1.0


def held_out_scenes(
    count: int, training_count: int, first_seed: int = 1_000_000, max_shapes: int = 2, tries: int = 100
) -> list[Scene]:
    """``count`` scenes for evaluation, from seeds ``first_seed``, ``first_seed + 1``, ..., skipping every scene
    whose caption is one of the training scenes' (``sample_scene(0 .. training_count - 1, max_shapes)``) or of an
    earlier held-out scene. Raises InputError when ``tries * count`` seeds do not give enough."""
    if count <= 0 or training_count < 0:
        raise InputError(f"expected a positive count and a training count >= 0, found {count} and {training_count}")
    seen = {sample_scene(seed, max_shapes).caption() for seed in range(training_count)}
    scenes: list[Scene] = []
    for seed in range(first_seed, first_seed + tries * count):
        scene = sample_scene(seed, max_shapes)
        if scene.caption() not in seen:
            seen.add(scene.caption())
            scenes.append(scene)
            if len(scenes) == count:
                return scenes
    raise InputError(
        f"expected {count} scenes whose captions no training scene has, found {len(scenes)} in {tries * count} seeds "
        f"from {first_seed}: {training_count} training scenes of at most {max_shapes} shapes leave too few"
    )
