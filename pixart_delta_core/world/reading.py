"""Reading a picture of the shapes world back into its attributes, with the world's own rules.

The background is the palette background nearest the picture's border; shapes are the connected regions
of pixels far from it; each shape's colour is the nearest palette colour, its kind the one whose outline
(drawn by the renderer's own ``draw_shape``) covers it best, its size and place come from the fitted
outline and its centroid. Every rule works in fractions of the side, so any square picture is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InputError
from .render import draw_shape, outline
from .scenes import BACKGROUNDS, COLOURS, KINDS, SIZES, Scene, Shape, place_of

BORDER = 2  # px: the ring of the picture read for the background (shapes keep clear of it)
MIN_AREA = 0.005  # a region under this fraction of the picture is a speck, not a shape (the smallest is ~1.4%)
SIZE_THRESHOLD = (SIZES["small"] * SIZES["large"]) ** 0.5  # a fitted side above this fraction of the picture: large
PAD = 3  # px around a region when its outlines are drawn, so an outline a little larger still fits

_BACKGROUND_RGB = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
_COLOUR_RGB = np.array(list(COLOURS.values()), dtype=np.float32)


@dataclass(frozen=True, eq=False)
class FoundShape:
    """One shape read from a picture: its attributes, where it is (px) and how well its kind fits."""

    colour: str
    kind: str
    size: str
    place: int  # index into PLACES: the grid cell of the centroid
    x: float  # the centroid, px from the left
    y: float  # the centroid, px from the top
    side: float  # the side of the fitted outline's bounding square, px
    fit: float  # IoU of the region with its kind's fitted outline (1 = exactly that outline)
    mask: np.ndarray  # bool (H, W): the region's pixels

    def as_shape(self) -> Shape:
        """The world's ``Shape`` with these attributes, centred on the centroid."""
        return Shape(self.kind, self.colour, self.size, self.place, self.x, self.y, self.side)

    def description(self) -> str:
        """E.g. "a small red circle at the top left" (the caption's phrase for it)."""
        return self.as_shape().phrase()


@dataclass(frozen=True, eq=False)
class Reading:
    """What a picture shows: its background colour and its shapes, in the order of their places (as captions)."""

    background: str
    shapes: tuple[FoundShape, ...]
    foreground: np.ndarray  # bool (H, W): every pixel far from the background, specks included

    def scene(self) -> Scene:
        """The read picture as a scene (shapes in reading order): ``scene().caption()`` says what it shows."""
        return Scene(self.background, tuple(s.as_shape() for s in self.shapes))

    def caption(self) -> str:
        """What the picture shows in the world's words ("nothing, on a gray background" when no shape is read)."""
        return self.scene().caption() if self.shapes else f"nothing, on a {self.background} background"


def picture_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    """A square picture as float32 RGB pixels (H, W, 3) in 0..255. Raises InputError for anything else."""
    if isinstance(image, Image.Image):
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    elif isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        pixels = image.astype(np.float32)
    else:
        found = f"an array {image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"expected a picture (a PIL image or a uint8 array (H, W, 3)), found {found}")
    height, width = pixels.shape[:2]
    if height != width or height < 3 * BORDER + 3:
        raise InputError(f"expected a square picture of the shapes world, found {width} x {height} px")
    return pixels


def read_background(pixels: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    """The background's name (the palette background most border pixels are nearest), its colour as drawn (the
    median of those pixels) and the foreground: pixels farther from it than half its distance to the nearest
    shape colour (an anti-aliased edge counts where it is at least half shape). ``pixels``: (H, W, 3)."""
    ring = np.ones(pixels.shape[:2], dtype=bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    border = pixels[ring]  # (N, 3)
    nearest = np.argmin(np.linalg.norm(border[:, None] - _BACKGROUND_RGB[None], axis=2), axis=1)
    index = int(np.bincount(nearest, minlength=len(BACKGROUNDS)).argmax())
    drawn = np.median(border[nearest == index], axis=0)
    threshold = 0.5 * np.linalg.norm(_COLOUR_RGB - drawn, axis=1).min()
    foreground = np.linalg.norm(pixels - drawn, axis=2) > threshold
    return list(BACKGROUNDS)[index], drawn, foreground


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 4-connected regions of a bool mask (H, W): labels (H, W) int, 0 outside, 1..n inside, and n.

    Written here rather than taken from scipy.ndimage.label: the engine does not depend on scipy for one
    small function. Each pixel starts with its own flat index; every round takes the smallest label among
    its neighbours, then jumps each label to its owner's label, so a region settles on its smallest index
    in a few rounds (about log of its size, not its length).
    """
    height, width = mask.shape
    outside = height * width
    labels = np.where(mask, np.arange(outside).reshape(height, width), outside)
    while True:
        smallest = labels.copy()
        np.minimum(smallest[1:], labels[:-1], out=smallest[1:])
        np.minimum(smallest[:-1], labels[1:], out=smallest[:-1])
        np.minimum(smallest[:, 1:], labels[:, :-1], out=smallest[:, 1:])
        np.minimum(smallest[:, :-1], labels[:, 1:], out=smallest[:, :-1])
        smallest = np.where(mask, smallest, outside)
        smallest = np.append(smallest.ravel(), outside)[smallest]  # jump: a label takes its owner's label
        if np.array_equal(smallest, labels):
            break
        labels = smallest
    roots, inverse = np.unique(labels, return_inverse=True)
    count = len(roots) - int(roots[-1] == outside)
    labels = np.where(mask, inverse.reshape(height, width) + 1, 0)
    return labels, count


@cache
def _unit_outline(kind: str) -> tuple[tuple[float, float, float, float], float, tuple[float, float]]:
    """A side-1 ``kind`` outline centred at (0, 0): its bounding box, area and centroid (shoelace formula)."""
    if kind == "circle":
        return (-0.5, -0.5, 0.5, 0.5), np.pi / 4, (0.0, 0.0)
    points = np.array(outline(kind, 0.0, 0.0, 1.0))
    x, y = points[:, 0], points[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    centroid = ((x + np.roll(x, -1)) * cross).sum() / (6 * area), ((y + np.roll(y, -1)) * cross).sum() / (6 * area)
    return (x.min(), y.min(), x.max(), y.max()), abs(area), (float(centroid[0]), float(centroid[1]))


def _fits(kind: str, box: tuple[int, int, int, int], area: float, centroid: tuple[float, float]) -> list[tuple]:
    """Where a ``kind`` outline matching a region would be, as (x, y, side) px: one fitted to the region's
    bounding box, one with the region's area and centroid (it holds better where blur rounds the corners)."""
    (ux0, uy0, ux1, uy1), unit_area, (ucx, ucy) = _unit_outline(kind)
    left, top, right, bottom = box  # pixel edges: the region spans [left, right) x [top, bottom)
    side = ((right - left) / (ux1 - ux0) + (bottom - top) / (uy1 - uy0)) / 2
    by_box = ((left + right) / 2 - side * (ux0 + ux1) / 2, (top + bottom) / 2 - side * (uy0 + uy1) / 2, side)
    side = (area / unit_area) ** 0.5
    by_area = (centroid[0] - side * ucx, centroid[1] - side * ucy, side)
    return [by_box, by_area]


def fit_kind(region: np.ndarray) -> tuple[str, float, float]:
    """The kind whose world outline best covers a region (bool (H, W), pixel centres at +0.5): the kind, the
    IoU of its fitted outline with the region, and the outline's side in px."""
    rows, columns = np.nonzero(region)
    top, left = max(0, rows.min() - PAD), max(0, columns.min() - PAD)
    crop = region[top : rows.max() + PAD + 1, left : columns.max() + PAD + 1]
    box = (columns.min() - left, rows.min() - top, columns.max() + 1 - left, rows.max() + 1 - top)
    centroid = (columns.mean() - left + 0.5, rows.mean() - top + 0.5)
    best = ("", -1.0, 0.0)
    for kind in KINDS:
        for x, y, side in _fits(kind, box, float(len(rows)), centroid):
            drawn = Image.new("L", (crop.shape[1], crop.shape[0]), 0)
            # PIL fills the pixels whose centres are inside; the outline is shifted so pixel i spans [i, i + 1)
            draw_shape(ImageDraw.Draw(drawn), Shape(kind, "", "", 0, x - 0.5, y - 0.5, side), 1.0, fill=255)
            inside = np.asarray(drawn) > 127
            iou = np.logical_and(inside, crop).sum() / max(1, np.logical_or(inside, crop).sum())
            if iou > best[1]:
                best = (kind, float(iou), side)
    return best


def read_colour(pixels: np.ndarray, background: np.ndarray) -> str:
    """The palette colour nearest the median of a region's purest pixels ((N, 3): the half farthest from the
    background colour, so blurred rims, which mix with the background, do not pull it off)."""
    distance = np.linalg.norm(pixels - background, axis=1)
    core = pixels[distance >= np.median(distance)]
    return list(COLOURS)[int(np.argmin(np.linalg.norm(_COLOUR_RGB - np.median(core, axis=0), axis=1)))]


def read_picture(image: Image.Image | np.ndarray) -> Reading:
    """Read a picture of the shapes world (a square PIL image or uint8 array (H, W, 3), any side) back into
    its background and shapes. Regions under ``MIN_AREA`` of the picture are dropped as specks.
    Raises InputError for what is not a square picture."""
    pixels = picture_pixels(image)
    side = pixels.shape[0]
    background, drawn, foreground = read_background(pixels)
    labels, count = label_regions(foreground)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    shapes = []
    for label in np.argsort(-areas[1:]) + 1:
        if areas[label] < MIN_AREA * side * side:
            break
        region = labels == label
        rows, columns = np.nonzero(region)
        x, y = float(columns.mean()) + 0.5, float(rows.mean()) + 0.5
        kind, fit, fitted = fit_kind(region)
        shapes.append(
            FoundShape(
                colour=read_colour(pixels[region], drawn),
                kind=kind,
                size="large" if fitted > SIZE_THRESHOLD * side else "small",
                place=place_of(x, y, side),
                x=x,
                y=y,
                side=fitted,
                fit=fit,
                mask=region,
            )
        )
    return Reading(background, tuple(sorted(shapes, key=lambda s: s.place)), foreground)
