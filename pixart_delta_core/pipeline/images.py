"""Images between PIL, tensors and the VAE's [-1, 1] range, and fitting an image to a size.

Tensors here are channels first, [B,C,H,W]; ComfyUI's IMAGE ([B,H,W,C] in [0, 1]) is moved to that
order by the nodes before it reaches the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError
from ..pictures import to_rgb, upright_size
from .resolution import SIZE_MULTIPLE, Size

log = logging.getLogger(__name__)

ASPECT_TOLERANCE = 0.01  # aspect ratios this close (relative) count as the same: a few pixels of rounding


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images [B,3,H,W] (or [3,H,W]) in [-1, 1] -> RGB PIL images (clamped, rounded to 8 bits)."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"expected images shaped [batch, 3, height, width], found {list(images.shape)}")
    pixels = ((images.detach().float().cpu() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)  # [B,3,H,W]
    return [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]


def from_pil(images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
    """PIL images of one (upright) size -> [B,3,H,W] in [-1, 1], each read by ``pictures.to_rgb`` (upright, deeper
    grey scaled to 8 bits, transparency composited onto black)."""
    images = [images] if isinstance(images, Image.Image) else list(images)
    sizes = {upright_size(im) for im in images}
    if len(sizes) != 1:
        raise InputError(f"expected images of one size, found sizes (width, height) {sorted(sizes)}")
    return torch.stack([_unit_tensor(im) for im in images]) * 2 - 1


def _unit_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image (any mode, ``pictures.to_rgb``) -> [3,H,W] float32 in [0, 1]."""
    array = np.array(to_rgb(image), dtype=np.uint8)  # [H,W,3]
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


def resize_and_crop(images: torch.Tensor, height: int, width: int, antialias: bool = False) -> torch.Tensor:
    """[B,C,H,W] -> [B,C,height,width]: scaled (bilinear) to cover the size, keeping the aspect ratio, then
    centre-cropped.

    With ``antialias=False`` this is how the reference app and diffusers bring an image generated at
    an aspect-ratio bin back to the size that was asked (same rounding, same interpolation).
    """
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    ratio = max(height / h, width / w)
    # Rounded down like the reference, but never below the size on the side that sets the ratio.
    rh, rw = max(height, int(h * ratio)), max(width, int(w * ratio))
    resized = F.interpolate(images, size=(rh, rw), mode="bilinear", align_corners=False, antialias=antialias)
    top, left = (rh - height) // 2, (rw - width) // 2
    return resized[..., top : top + height, left : left + width]


def prepare_image(image: Image.Image | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Any image -> the VAE's input at a size: [B,3,height,width] in [-1, 1], resized to cover and
    centre-cropped (antialiased, as the reference prepares control images).

    ``image``: a PIL image of any mode (read by ``pictures.to_rgb``: upright, transparency composited onto black),
    or a tensor [C,H,W] or [B,C,H,W], channels first, in [0, 1] (uint8: 0..255), with C = 1 (grey), 3 (RGB) or 4
    (RGBA, composited onto black by the same rule).
    """
    for name, side in (("height", height), ("width", width)):
        if isinstance(side, bool) or not isinstance(side, int) or side <= 0:
            raise InputError(f"{name} must be a positive whole number of pixels, found {side!r}")
    if isinstance(image, Image.Image):
        pixels = _unit_tensor(image)[None]
    elif isinstance(image, torch.Tensor):
        pixels = _unit_channels_first(image)
    else:
        raise InputError(f"expected a PIL image or a tensor, found {type(image).__name__}")
    fitted = resize_and_crop(pixels, height, width, antialias=True).clamp(0, 1)  # [B,3,height,width]
    return fitted * 2 - 1


def image_size(image: Image.Image | torch.Tensor) -> tuple[int, int]:
    """(height, width) in pixels of a PIL image (upright: ``pictures.upright_size``) or a tensor channels first
    ([C,H,W] or [B,C,H,W])."""
    if isinstance(image, Image.Image):
        width, height = upright_size(image)
        return height, width
    return int(image.shape[-2]), int(image.shape[-1])


INIT_IMAGE_SIZE = "the init image's size"  # where the picture's size came from, in messages about it


def init_sets_size(height: int | None, width: int | None, init_image: object | None) -> bool:
    """Whether the picture takes the init image's size: an init image is given, and neither height nor width."""
    return init_image is not None and height is None and width is None


def asked_size(height: int | None, width: int | None, default: Size, init_size: Size | None) -> Size:
    """(height, width) in pixels: as given, else the init image's size ``init_size`` (``init_sets_size``) to the
    nearest multiple of ``SIZE_MULTIPLE`` px a side (the init image is scaled to the picture anyway: a 1080 px
    photo makes a 1088 px picture, not a refusal), else ``default`` (the model's training resolution)."""
    if init_size is not None and init_sets_size(height, width, init_size):
        init_height, init_width = init_size
        return _to_size_multiple(init_height), _to_size_multiple(init_width)
    return (default[0] if height is None else height, default[1] if width is None else width)


def _to_size_multiple(side: int) -> int:
    return max(SIZE_MULTIPLE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def warn_if_cropped(
    name: str,
    image: Image.Image | torch.Tensor,
    height: int,
    width: int,
    source: str = "",
    sets_size: bool = False,
) -> None:
    """Log a warning when ``image`` (PIL, or a tensor channels first) and the picture of ``height`` x ``width``
    px differ in aspect ratio by more than ``ASPECT_TOLERANCE``: ``prepare_image`` then cuts its edges off.
    ``source``: where the picture's size came from, said after it (``INIT_IMAGE_SIZE``), if not from the caller.
    ``sets_size``: the image is the init image whose size the picture takes (``init_sets_size``), so the size is the
    pack's choice, and ``_say_fitted`` says which and why instead.

    An image of the same aspect ratio and another size is only scaled, and nothing is said.
    """
    if sets_size:
        _say_fitted(name, image, height, width)
        return
    h, w = image_size(image)
    if _same_aspect(h, w, height, width):
        return
    log.warning(
        "%s is %dx%d px, the picture %dx%d px (width x height%s): another aspect ratio, so it is scaled to cover "
        "the picture and centre-cropped, its edges cut off (not stretched)",
        name,
        w,
        h,
        width,
        height,
        f", {source}" if source else "",
    )


def _same_aspect(h: int, w: int, height: int, width: int) -> bool:
    """Whether ``h`` x ``w`` and ``height`` x ``width`` have one aspect ratio, within ``ASPECT_TOLERANCE`` (and
    whether there is nothing to compare: a side of 0)."""
    return min(h, w, height, width) <= 0 or abs((w / h) / (width / height) - 1) <= ASPECT_TOLERANCE


def _say_fitted(name: str, image: Image.Image | torch.Tensor, height: int, width: int) -> None:
    """Say how an init image that sets the picture's size (``init_sets_size``) is fitted to it, ``height`` x
    ``width`` px: its own size with each side to the nearest multiple of ``SIZE_MULTIPLE`` (``asked_size``). A
    warning where that changes the aspect ratio, so that ``prepare_image`` cuts edges off; a note where it is only
    scaled; nothing where it is the image's size."""
    h, w = image_size(image)
    if (h, w) == (height, width):
        return
    cropped = not _same_aspect(h, w, height, width)
    (log.warning if cropped else log.info)(
        "%s is %dx%d px (width x height), a side not a multiple of %d px, as a picture's must be: it is %s to "
        "%dx%d px, the nearest such size%s; a width and height choose another size (--width and --height on the "
        "command line)",
        name,
        w,
        h,
        SIZE_MULTIPLE,
        "scaled and centre-cropped" if cropped else "scaled",
        width,
        height,
        ", its edges cut off (another aspect ratio, not stretched)" if cropped else "",
    )


def _unit_channels_first(image: torch.Tensor) -> torch.Tensor:
    """A tensor image [C,H,W] / [B,C,H,W] in [0, 1] or uint8 -> [B,3,H,W] float32 in [0, 1] (grey repeated, RGBA
    composited onto black)."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] not in (1, 3, 4):
        raise InputError(
            f"expected an image tensor [channels, height, width] or [batch, channels, height, width] with 1, 3 "
            f"or 4 channels first, found shape {list(image.shape)}"
        )
    pixels = image.float() / 255 if image.dtype == torch.uint8 else image.float()
    if pixels.shape[1] == 4:  # RGBA: onto black, as pictures.to_rgb composites a PIL image's transparency
        return pixels[:, :3] * pixels[:, 3:].clamp(0, 1)
    return pixels[:, :3].expand(-1, 3, -1, -1)  # grey: the one channel is repeated
