"""Pictures given to the engine (init and control images, training images, pictures to judge) turned into what it
reads: 8-bit RGB, upright, transparency composited onto black, by one rule for every caller.

The rules, each for a way a plain ``image.convert("RGB")`` misreads a file:

* EXIF orientation (a phone photo stored sideways with an Orientation tag): turned upright, as image viewers and
  ComfyUI's LoadImage show it; ``upright_size`` gives its size from the header, so that size checks and the size
  taken from an init image are the upright ones (orientations 5 to 8 swap width and height). The upright picture
  carries no tag any more, so reading it again (an init image decoded early, then prepared) turns it no further.
* More than 8 bits of grey (Pillow's modes "I;16" for a 16-bit PNG or TIFF, "I" for 32-bit integers, "F" for
  floats): scaled to 8 bits, not clipped (``convert`` clips, so a 16-bit picture came out almost all white). The
  full scale is 65535 for "I;16"; for "I" and "F", whose files do not say their range, the least of 1 (floats
  only), 255 and 65535 that no value exceeds (so an 8-bit picture converted to "I" or "F" reads back the same);
  values outside 0..full scale are clipped, NaN reads as 0. 16-bit RGB(A) PNGs need nothing: Pillow reads them
  as 8-bit RGB(A).
* Transparency (RGBA, LA, PA, and palette or colour-key "transparency"): composited onto black. The colour hidden
  under a transparent pixel is whatever the editor left there, so dropping alpha (what ``convert`` and ComfyUI's
  LoadImage do) gives unpredictable results; and the pack's control images are edge maps, white edges on black,
  so an edge map drawn on a transparent layer keeps its meaning on black. A 16-bit grey picture's colour key is
  not applied.

Imports only PIL and numpy (the shapes world's judge uses it too).
"""

from __future__ import annotations

import re
import struct

import numpy as np
from PIL import Image

ORIENTATION = 0x0112  # the EXIF Orientation tag
# Orientation -> the transpose that makes the picture upright (Pillow's ImageOps.exif_transpose table, applied here
# from the same reading of the tag as upright_size, so that the size checked and the pixels used agree).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_FULL_SCALES = {"I": (255, 65535), "F": (1, 255, 65535)}  # "I;16*": 65535; see the module docstring


def orientation(image: Image.Image) -> int:
    """The image's EXIF Orientation, 1 to 8 (1, upright, when it has none or a broken one), read from the header
    without decoding the pixels.

    A PNG's EXIF counts only when it comes before the pixels (as Pillow and cameras write it): Pillow's
    ``PngImageFile.getexif`` would decode the whole picture to look for an eXIf chunk behind them, so the base
    class's reading (EXIF, ImageMagick's text profile and XMP already in ``info``) is used instead.
    """
    try:
        header_only = image.format == "PNG" and "exif" not in image.info
        value = (Image.Image.getexif(image) if header_only else image.getexif()).get(ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, struct.error, TypeError, IndexError, KeyError):  # a broken EXIF block
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) in pixels of the image as ``to_rgb`` gives it: swapped for EXIF orientations 5 to 8. From
    the header only (nothing decoded)."""
    width, height = image.size
    return (height, width) if orientation(image) >= 5 else (width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """A new, decoded 8-bit RGB image of ``image`` (any Pillow mode): upright, deeper grey scaled to 8 bits,
    transparency composited onto black (the module docstring gives each rule). Its size is ``upright_size(image)``.
    It carries none of ``image``'s metadata (its ``info`` is empty): no EXIF or XMP orientation is left on it to turn
    it again, so ``to_rgb`` and ``upright_size`` take it as it is, and no colour profile or transparency of the
    source's mode is left to misdescribe its pixels.

    Raises what Pillow raises for pixels it cannot decode (OSError, ValueError, SyntaxError, EOFError).
    """
    turn = _UPRIGHT.get(orientation(image))  # read before the pixels are decoded, as upright_size reads it
    if image.mode in _FULL_SCALES or image.mode.startswith("I;16"):
        rgb = _eight_bit(image).convert("RGB")
    elif image.has_transparency_data:
        rgba = image.convert("RGBA")
        rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    else:
        rgb = image.convert("RGB")
    upright = rgb if turn is None else rgb.transpose(turn)  # every branch made a new image: its info is its own
    upright.info = {}
    return upright


def _eight_bit(image: Image.Image) -> Image.Image:
    """A grey image of more than 8 bits ("I;16*", "I", "F") -> "L", scaled from its full scale (module docstring)."""
    values = np.asarray(image, dtype=np.float32)  # [H,W]
    finite = values[np.isfinite(values)]
    largest = float(finite.max()) if finite.size else 0.0
    scales = _FULL_SCALES.get(image.mode, (65535,))
    full = next((top for top in scales if largest <= top), scales[-1])
    values = np.nan_to_num(values, nan=0.0, posinf=full, neginf=0.0)
    return Image.fromarray((np.clip(values, 0, full) * (255 / full)).round().astype(np.uint8))


def bomb_pixels(error: Image.DecompressionBombError) -> int | None:
    """The pixel count (from the file's header) that Pillow's ``DecompressionBombError`` found too large to decode,
    read from its message ("Image size (N pixels) exceeds limit of ..."); None if Pillow words it otherwise."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return int(found[1]) if found else None
