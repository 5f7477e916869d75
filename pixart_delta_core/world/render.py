"""Drawing scenes of the shapes world: the picture and its edge map (the ControlNet's control image)."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from .scenes import BACKGROUNDS, COLOURS, IMAGE_SIZE, Scene, Shape

SUPERSAMPLE = 4  # drawn this many times larger, then reduced: smooth edges
STAR_INNER = 0.45  # a star's inner radius over its outer radius


def outline(kind: str, x: float, y: float, side: float) -> list[tuple[float, float]] | tuple[float, ...]:
    """The polygon (a circle: its bounding box) of a ``kind`` shape centred at (x, y) in a square of ``side`` px."""
    r = side / 2
    if kind == "circle":
        return (x - r, y - r, x + r, y + r)
    if kind == "square":
        return [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
    if kind == "triangle":
        return [(x, y - r), (x + r, y + r), (x - r, y + r)]
    if kind == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * STAR_INNER
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((x + radius * math.cos(angle), y + r * 0.1 + radius * math.sin(angle)))
        return points
    raise ValueError(f"unknown shape kind {kind!r}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, scale: float, fill: object = None, width: int = 0) -> None:
    """Draw ``shape`` filled with ``fill`` (or only its outline, ``width`` px wide), at ``scale`` x its size."""
    geometry = outline(shape.kind, shape.x * scale, shape.y * scale, shape.side * scale)
    if shape.kind == "circle":
        draw.ellipse(geometry, fill=fill, outline=None if fill else 255, width=width)
    elif fill is not None:
        draw.polygon(geometry, fill=fill)
    else:
        draw.polygon(geometry, outline=255, width=width)


def render(scene: Scene, image_size: int = IMAGE_SIZE) -> Image.Image:
    """The scene as an RGB picture of ``image_size`` px per side."""
    big = image_size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        draw_shape(draw, shape, SUPERSAMPLE * image_size / IMAGE_SIZE, fill=COLOURS[shape.colour])
    return image.resize((image_size, image_size), Image.Resampling.LANCZOS)


def edge_map(scene: Scene, image_size: int = IMAGE_SIZE, width_px: float = 1.5) -> Image.Image:
    """The outlines of the scene's shapes, white on black (RGB), ``width_px`` wide."""
    big = image_size * SUPERSAMPLE
    image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        draw_shape(draw, shape, SUPERSAMPLE * image_size / IMAGE_SIZE, width=round(width_px * SUPERSAMPLE))
    return image.resize((image_size, image_size), Image.Resampling.BOX).convert("RGB")


def filled_mask(scene: Scene, image_size: int = IMAGE_SIZE) -> Image.Image:
    """The regions the scene's shapes cover, 255 inside (mode "L")."""
    image = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        draw_shape(draw, shape, image_size / IMAGE_SIZE, fill=255)
    return image
