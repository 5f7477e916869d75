"""Reading a picture of the shapes world back into its attributes, with the world's own rules.

The background is the palette background nearest the picture's border; shapes are the connected regions
of pixels far from it; each shape's colour is the nearest palette colour (a background's too: a shape drawn
black, white or gray reads as such, a colour no prompt gives a shape), its kind the one whose outline
(drawn by the renderer's own ``draw_shape``, placed with the region's area and centroid) matches it best,
blurred or not, its size comes from that outline and its place from its centroid. Every rule works in
fractions of the side, so any square picture is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import InputError
from ..pictures import to_rgb
from .render import SUPERSAMPLE, draw_shape, outline
from .scenes import BACKGROUNDS, COLOURS, KINDS, SIZES, Scene, Shape, place_of

BORDER = 2  # px: the ring of the picture read for the background (shapes keep clear of it)
MIN_AREA = 0.005  # a region under this fraction of the picture is a speck, not a shape (the smallest is ~1.4%)
SIZE_THRESHOLD = (SIZES["small"] * SIZES["large"]) ** 0.5  # a fitted side above this fraction of the picture: large
REACH = 8  # px around a region's box read to fit its outline
GROW = 4  # px around a region whose pixels count as part of its shape (blur spreads a shape past its region)
BLURS = (0.0, 1.0, 2.0, 3.0)  # Gaussian std (px) of the blurs each fitted outline is also compared with

_BACKGROUND_RGB = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
_COLOUR_RGB = np.array(list(COLOURS.values()), dtype=np.float32)
# What a shape's colour reads as: the shapes' colours and, so that a shape drawn in one of them is not read as
# the nearest shape colour (black as green), the backgrounds'.
SHAPE_PALETTE = {**COLOURS, **BACKGROUNDS}
_PALETTE_RGB = np.array(list(SHAPE_PALETTE.values()), dtype=np.float32)


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
    """A square picture as float32 RGB pixels (H, W, 3) in 0..255: a PIL image of any mode is read by
    ``pictures.to_rgb`` (upright, deeper grey scaled to 8 bits, transparency onto black). Raises InputError for
    anything else, or a picture that is not square or too small."""
    if isinstance(image, Image.Image):
        pixels = np.asarray(to_rgb(image), dtype=np.float32)
    elif isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        pixels = image.astype(np.float32)
    else:
        found = f"an array {image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"expected a picture (a PIL image or a uint8 array (H, W, 3)), found {found}")
    height, width = pixels.shape[:2]
    if height != width:
        raise InputError(f"expected a square picture of the shapes world, found {width} x {height} px")
    if height < 3 * BORDER + 3:  # a background ring and something inside it
        least = 3 * BORDER + 3
        raise InputError(f"expected a picture of at least {least} x {least} px, found {width} x {height} px")
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
def _unit_outline(kind: str) -> tuple[float, tuple[float, float]]:
    """A side-1 ``kind`` outline centred at (0, 0): its area and centroid (shoelace formula)."""
    if kind == "circle":
        return np.pi / 4, (0.0, 0.0)
    points = np.array(outline(kind, 0.0, 0.0, 1.0))
    x, y = points[:, 0], points[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    centroid = ((x + np.roll(x, -1)) * cross).sum() / (6 * area), ((y + np.roll(y, -1)) * cross).sum() / (6 * area)
    return abs(area), (float(centroid[0]), float(centroid[1]))


def _drawn_coverage(kind: str, x: float, y: float, side: float, shape: tuple[int, int]) -> Image.Image:
    """How much of each pixel (mode "L", 255 = all) a ``kind`` outline centred at (x, y) px covers, drawn by the
    renderer's ``draw_shape`` at ``SUPERSAMPLE`` x and reduced; pixel i spans [i, i + 1)."""
    height, width = shape
    big = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    at = Shape(kind, "", "", 0, x * SUPERSAMPLE - 0.5, y * SUPERSAMPLE - 0.5, side * SUPERSAMPLE)  # PIL: centres
    draw_shape(ImageDraw.Draw(big), at, 1.0, fill=255)
    return big.resize((width, height), Image.Resampling.BOX)


def fit_kind(coverage: np.ndarray) -> tuple[str, float, float]:
    """The kind whose world outline best matches a region: the kind, the match (0..1) and the outline's side px.

    ``coverage`` (H, W) is how much of each pixel the region covers (0 outside it, 1 inside, between on its
    edges; noise may take it a little past 0 or 1). Blur keeps a region's area and centroid, so each kind's
    outline is placed with the region's area and centroid, then compared with the region by the IoU of the two
    coverages (the sum of their minima over the sum of their maxima; 1 for the same outline). A generated
    picture is blurred by an amount not known in advance, so each outline is also compared blurred by each of
    ``BLURS`` (Gaussian std, px) and its best match kept: a blurred star then still matches a blurred star best.
    """
    area = float(coverage.sum())
    if area <= 0:
        raise InputError(f"expected a region that covers some pixels, found a total coverage of {area}")
    rows, columns = np.indices(coverage.shape) + 0.5
    x, y = float((coverage * columns).sum() / area), float((coverage * rows).sum() / area)
    clipped = np.clip(coverage, 0.0, 1.0)
    best = ("", -1.0, 0.0)
    for kind in KINDS:
        unit_area, (unit_x, unit_y) = _unit_outline(kind)
        side = (area / unit_area) ** 0.5
        drawn = _drawn_coverage(kind, x - side * unit_x, y - side * unit_y, side, coverage.shape)
        for blur in BLURS:
            blurred = drawn.filter(ImageFilter.GaussianBlur(blur)) if blur else drawn
            outline_coverage = np.asarray(blurred, dtype=np.float32) / 255
            match = np.minimum(clipped, outline_coverage).sum() / np.maximum(clipped, outline_coverage).sum()
            if match > best[1]:
                best = (kind, float(match), side)
    return best


def _grown(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` grown by ``steps`` px (each step adds the 4 neighbours of every pixel in it)."""
    for _ in range(steps):
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        mask = grown
    return mask


def region_coverage(
    pixels: np.ndarray, labels: np.ndarray, label: int, background: np.ndarray, colour: str
) -> np.ndarray:
    """How much of each pixel near region ``label`` its shape covers, read as the fraction of the way from the
    background colour (as drawn) to the shape's palette colour: (h, w) over the region's box grown by ``REACH``
    px, 0 past ``GROW`` px from the region and on other regions. Blur spreads a shape past its region (whose
    pixels are at least half shape), so the pixels around it count too. A region whose colour is so far from
    the palette that it reads as covering less than half of itself, or whose colour reads as the background's own
    palette colour drawn exactly, is taken as covering exactly its pixels."""
    region = labels == label
    rows, columns = np.nonzero(region)
    top, left = max(0, rows.min() - REACH), max(0, columns.min() - REACH)
    box = np.s_[top : rows.max() + REACH + 1, left : columns.max() + REACH + 1]
    towards = np.array(SHAPE_PALETTE[colour], dtype=np.float32) - background
    if not towards @ towards:  # read as the background's own colour, drawn exactly: no way from one to the other
        return region[box].astype(np.float32)
    coverage = (pixels[box] - background) @ towards / (towards @ towards)
    near = _grown(region[box], GROW) & np.isin(labels[box], (0, label))
    coverage = np.where(near, coverage, 0.0)
    return coverage if coverage.sum() >= len(rows) / 2 else region[box].astype(np.float32)


def read_colour(pixels: np.ndarray, background: np.ndarray) -> str:
    """The colour of ``SHAPE_PALETTE`` nearest the median of a region's purest pixels ((N, 3): the half farthest
    from the background colour, so blurred rims, which mix with the background, do not pull it off)."""
    distance = np.linalg.norm(pixels - background, axis=1)
    core = pixels[distance >= np.median(distance)]
    return list(SHAPE_PALETTE)[int(np.argmin(np.linalg.norm(_PALETTE_RGB - np.median(core, axis=0), axis=1)))]


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
        colour = read_colour(pixels[region], drawn)
        kind, fit, fitted = fit_kind(region_coverage(pixels, labels, int(label), drawn, colour))
        shapes.append(
            FoundShape(
                colour=colour,
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
