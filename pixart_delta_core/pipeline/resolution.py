"""Image sizes: the aspect-ratio bins PixArt was trained on, the nearest bin, and size checks.

PixArt trains on images grouped by aspect ratio into fixed sizes ("bins"), and the reference app
and diffusers generate at the bin nearest to the asked aspect ratio, then resize and centre-crop the
result to the asked size (``images.resize_and_crop``). The 1024-MS models take the size as a
micro-condition, so sizes they were trained on give the best images.
"""

from __future__ import annotations

from ..errors import InputError, nearest_multiples
from ..models.transformer_config import TransformerConfig

Size = tuple[int, int]  # (height, width) in pixels
MIN_SIDE = 16  # two latent patches: smaller sizes would be generated at a bin and cropped to almost nothing

# The 1024 px training bins, (height, width), ascending aspect ratio; every side a multiple of 64.
_TRAINING_1024: tuple[Size, ...] = (
    (512, 2048), (512, 1984), (512, 1920), (512, 1856), (576, 1792), (576, 1728), (576, 1664), (640, 1600),
    (640, 1536), (704, 1472), (704, 1408), (704, 1344), (768, 1344), (768, 1280), (832, 1216), (832, 1152),
    (896, 1152), (896, 1088), (960, 1088), (960, 1024), (1024, 1024), (1024, 960), (1088, 960), (1088, 896),
    (1152, 896), (1152, 832), (1216, 832), (1280, 768), (1344, 768), (1408, 704), (1472, 704), (1536, 640),
    (1600, 640), (1664, 576), (1728, 576), (1792, 576), (1856, 512), (1920, 512), (1984, 512), (2048, 512),
)  # fmt: skip
# Extreme ratios the α/δ inference tables leave out (the 2K tables of PixArt-Σ keep them).
_TRAINING_ONLY_RATIOS = frozenset({0.26, 0.27, 2.89, 3.11, 3.62, 3.75, 3.88})


def bin_ratio(size: Size) -> float:
    """A bin's aspect ratio height / width, rounded to 2 decimals as the reference tables list it."""
    return round(size[0] / size[1], 2)


def _scaled(sizes: tuple[Size, ...], factor: float) -> tuple[Size, ...]:
    return tuple((int(h * factor), int(w * factor)) for h, w in sizes)


_INFERENCE_1024 = tuple(s for s in _TRAINING_1024 if bin_ratio(s) not in _TRAINING_ONLY_RATIOS)

# Resolution (px) -> the bins generation snaps to (what the reference app and diffusers use).
ASPECT_RATIO_BINS: dict[int, tuple[Size, ...]] = {
    256: _scaled(_INFERENCE_1024, 1 / 4),
    512: _scaled(_INFERENCE_1024, 1 / 2),
    1024: _INFERENCE_1024,
    2048: _scaled(_TRAINING_1024, 2),
}


def bins_for(config: TransformerConfig) -> tuple[Size, ...] | None:
    """The bins of a transformer's training resolution; None where it has none (256, 512, 1024 and 2048 px
    do: a model trained at another, such as the embedded 128 px one, draws the size asked, a multiple of 16)."""
    return ASPECT_RATIO_BINS.get(config.resolution)


def nearest_bin(height: int, width: int, bins: tuple[Size, ...] = ASPECT_RATIO_BINS[1024]) -> Size:
    """The bin whose aspect ratio is nearest to height / width (the first one on a tie)."""
    check_image_size(height, width, multiple=1)
    ratio = height / width
    return min(bins, key=lambda size: abs(bin_ratio(size) - ratio))


SIZE_MULTIPLE = 16  # latents are 1/8 of the image and the transformer's patches 2 latents wide
MAX_SIDE = 8192
MAX_PIXELS = 4096 * 4096  # 16.8 megapixels: the largest PixArt-Σ bins are 4.2


def check_image_size(height: int, width: int, multiple: int = SIZE_MULTIPLE) -> None:
    """Raise ``InputError`` unless height and width are positive multiples of ``multiple`` within the limits; the
    message names every side that is wrong."""
    wrong = [_side_wrong(name, side, multiple) for name, side in (("height", height), ("width", width))]
    if any(wrong):
        raise InputError("; ".join(w for w in wrong if w))
    if height * width > MAX_PIXELS:
        raise InputError(
            f"{height}x{width} is {height * width / 1e6:.1f} megapixels; the limit is {MAX_PIXELS / 1e6:.1f} "
            f"(4096x4096)"
        )


def _side_wrong(name: str, side: int, multiple: int) -> str:
    """What is wrong with one side (height or width) in pixels, or "" when nothing is."""
    if isinstance(side, bool) or not isinstance(side, int):
        return f"{name} must be a whole number of pixels, found {side!r}"
    if side < MIN_SIDE:
        return f"{name} must be at least {MIN_SIDE} px, found {side}"
    if side % multiple:
        return (
            f"{name} must be a multiple of {multiple} px, found {side} (nearest: {nearest_multiples(side, multiple)})"
        )
    if side > MAX_SIDE:
        return f"{name} must be at most {MAX_SIDE} px, found {side}"
    return ""
