"""Control images made from training images: Canny edges and a soft (HED-like) edge map.

Both are written here with numpy and PIL rather than taken from OpenCV or a learned HED network: the
pack does not carry a 60 MB image library for one filter, and a learned HED needs weights that cannot
be downloaded here (the reference ships no extractor at all). Outputs are RGB images, white edges on
black, the form the ControlNet-Transformer was trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from .config import ControlExtractor


def _luminance(image: Image.Image, blur: float) -> np.ndarray:
    grey = image.convert("L").filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else image.convert("L")
    return np.asarray(grey, dtype=np.float32) / 255.0  # [H, W]


def _sobel(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal and vertical Sobel gradients (edges replicated at the border)."""
    p = np.pad(values, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return gx, gy


def canny(image: Image.Image, low: float = 0.1, high: float = 0.2, blur: float = 1.4) -> Image.Image:
    """Canny edges (Canny 1986): Gaussian blur, Sobel gradients, non-maximum suppression along the
    gradient direction, then hysteresis: weak edges (> ``low``) kept where they touch strong ones
    (> ``high``); thresholds are fractions of the largest gradient magnitude."""
    gx, gy = _sobel(_luminance(image, blur))
    magnitude = np.hypot(gx, gy)
    magnitude /= max(float(magnitude.max()), 1e-8)
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0  # [0, 180)
    direction = (np.round(angle / 45.0).astype(np.int64)) % 4  # 0: horizontal gradient, 1: 45°, 2: 90°, 3: 135°
    p = np.pad(magnitude, 1)
    h, w = magnitude.shape
    offsets = {0: ((0, 1), (0, -1)), 1: ((1, 1), (-1, -1)), 2: ((1, 0), (-1, 0)), 3: ((1, -1), (-1, 1))}
    peak = np.zeros_like(magnitude, dtype=bool)
    for d, ((ay, ax), (by, bx)) in offsets.items():
        a = p[1 + ay : 1 + ay + h, 1 + ax : 1 + ax + w]
        b = p[1 + by : 1 + by + h, 1 + bx : 1 + bx + w]
        peak |= (direction == d) & (magnitude >= a) & (magnitude >= b)
    strong = peak & (magnitude > high)
    weak = peak & (magnitude > low)
    edges = strong
    while True:  # hysteresis: grow the strong edges through 8-connected weak ones
        grown = weak & _dilate(edges)
        if (grown == edges).all():
            break
        edges = grown
    return Image.fromarray((edges * 255).astype(np.uint8)).convert("RGB")


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1)
    h, w = mask.shape
    return np.logical_or.reduce([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])


def soft_edge(image: Image.Image, scales: tuple[float, ...] = (1.0, 2.0, 4.0)) -> Image.Image:
    """A soft edge map in the manner of HED: gradient magnitudes at several blur scales, averaged,
    normalised to [0, 1] and gamma-lifted so faint contours stay visible. No learned weights."""
    maps = []
    for scale in scales:
        gx, gy = _sobel(_luminance(image, scale))
        magnitude = np.hypot(gx, gy)
        maps.append(magnitude / max(float(magnitude.max()), 1e-8))
    edges = np.sqrt(np.mean(maps, axis=0))  # [H, W] in [0, 1]
    return Image.fromarray((edges * 255).round().astype(np.uint8)).convert("RGB")


EXTRACTORS: dict[ControlExtractor, Callable[[Image.Image], Image.Image]] = {
    ControlExtractor.CANNY: canny,
    ControlExtractor.SOFT_EDGE: soft_edge,
}
