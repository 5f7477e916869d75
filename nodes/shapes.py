"""The shapes world node: a scene of the world the embedded model was trained on, as a picture and its edge map,
so its ControlNet and image-to-image examples need no input file."""

from __future__ import annotations

import torch
from PIL import Image

from ..pixart_delta_core.pipeline.images import from_pil
from ..pixart_delta_core.world.judge import GRAMMAR, scene_for
from ..pixart_delta_core.world.render import edge_map, render
from ..pixart_delta_core.world.scenes import DEFAULT_CAPTION, DRAWN_SIDES, IMAGE_SIZE
from . import host


def image_output(picture: Image.Image) -> torch.Tensor:
    """A PIL picture as ComfyUI's IMAGE: [1, H, W, 3] float32 in 0..1."""
    return ((from_pil(picture) + 1) / 2).movedim(1, -1).to(host.intermediate_device())


class ShapesScene:
    """Draws a scene of the shapes world (the embedded model's training world) and its edge map."""

    DESCRIPTION = (
        "Draws a scene of the shapes world, the procedural world the pack's embedded model was trained on: "
        "coloured circles, squares, triangles and stars at named places on a background. It outputs the picture "
        "(a start image for image to image) and the outlines of its shapes, white on black (the control image of "
        "the embedded ControlNet). The caption uses the world's grammar; an empty caption draws the world's scene "
        "of scene_seed."
    )
    CATEGORY = "PixArt-δ/shapes world"
    FUNCTION = "draw"
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("image", "edge_map", "caption")
    OUTPUT_TOOLTIPS = (
        "The scene drawn, image_size px square.",
        "The outlines of its shapes, white on black: the control image of the embedded ControlNet.",
        "The scene's caption in the world's grammar (the prompt that asks for this scene).",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "caption": (
                    "STRING",
                    {
                        "default": DEFAULT_CAPTION,
                        "multiline": True,
                        "tooltip": f"The scene, in the world's grammar: {GRAMMAR}. Shapes sit at their places' "
                        "centres. Empty: the world's scene of scene_seed.",
                    },
                ),
                "scene_seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 2**31 - 1,
                        "tooltip": "With an empty caption: which scene of the world to draw (1 or 2 shapes, "
                        "placed with the world's jitter).",
                    },
                ),
                "image_size": (
                    "INT",
                    {
                        "default": IMAGE_SIZE,
                        "min": DRAWN_SIDES[0],
                        "max": DRAWN_SIDES[1],
                        "step": DRAWN_SIDES[2],
                        "tooltip": f"Pixels per side ({IMAGE_SIZE}: the size the embedded model makes).",
                    },
                ),
            }
        }

    def draw(self, caption: str, scene_seed: int = 0, image_size: int = IMAGE_SIZE) -> tuple:
        scene = scene_for(caption, scene_seed)
        return image_output(render(scene, image_size)), image_output(edge_map(scene, image_size)), scene.caption()
