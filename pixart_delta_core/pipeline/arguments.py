"""Generation arguments checked before any model loads: seeds, step counts, prompts and negative prompts, batch sizes,
images, latents.

The pipeline (``generation``) and the ComfyUI sampler node call these first, so a bad argument costs no
model load and gets an ``InputError`` naming the argument, what was expected and what was found.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from ..errors import InputError
from ..models.lora import check_strength
from ..pictures import bomb_pixels, to_rgb, upright_size
from ..sampling.choices import MAX_SEED  # plain data: the command line's parser reads it too
from .resolution import MIN_SIDE, SIZE_MULTIPLE, Size, check_image_size, nearest_bin

log = logging.getLogger(__name__)

# Bounds far above what any accelerator holds, so that a typo fails at once instead of after the models load:
MAX_IMAGE_PIXELS = 1 << 27  # an init or control image of at most 134 megapixels (e.g. 11585 x 11585) to decode
MAX_BATCH_PIXELS = 1 << 28  # images x height x width of one run: 256 images of 1024 x 1024, 16 of 4096 x 4096
# The least side of a control image. At 32 px the shapes world's small shapes (0.21 of the side) are still ~7 px
# across, about the least whose outline tells a circle from a square; a smaller edge map, scaled up to the picture
# (128 px and more; the ControlNet reads it in tokens of 16 x 16 px), is a blur that steers towards no shape.
MIN_CONTROL_SIDE = 32


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an integer, found {type(value).__name__} {value!r:.80}")
    return value


def check_integer(name: str, value: object, low: int, high: int) -> int:
    """``value`` when it is an ``int`` (not a bool) in ``low..high``; InputError naming ``name`` otherwise."""
    if not low <= _integer(name, value) <= high:
        raise InputError(f"{name} must be in {low}..{high}, found {value}")
    return value


def check_seed(seed: object) -> int:
    """A noise seed in 0..2^64-1, the CPU generator's range.

    A negative seed is refused rather than wrapped: the same number then means the same image in the
    pack, in diffusers and in ComfyUI, whose seed widget also spans 0..2^64-1.
    """
    return check_integer("seed", seed, 0, MAX_SEED)


def check_steps(steps: object) -> int:
    """A step count of integer type (bool, float and text refused); its range is the sampler's to check."""
    return _integer("steps", steps)


def check_prompts(prompts: Sequence[object], name: str = "prompt") -> list[str]:
    """Prompts as text: a lone surrogate (half of a UTF-16 pair, from a mis-decoded file or a broken
    clipboard) is refused, naming the prompt (by its number from 1, as a user counts: the first --prompt is
    prompt 1) and the position, since the tokenizer cannot encode it."""
    checked = []
    for i, prompt in enumerate(prompts, start=1):
        if not isinstance(prompt, str):
            raise InputError(f"{name} {i} must be text, found {type(prompt).__name__} {prompt!r:.80}")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InputError(
                f"{name} {i} holds a lone surrogate {prompt[err.start]!r} at character {err.start}, which is not "
                f"text any tokenizer encodes: fix how the prompt was decoded"
            ) from None
        checked.append(prompt)
    return checked


def check_batch(batch: int, height: int, width: int) -> None:
    """Refuse a run of ``batch`` images of ``height`` x ``width`` px beyond ``MAX_BATCH_PIXELS`` in all."""
    if batch * height * width > MAX_BATCH_PIXELS:
        raise InputError(
            f"{batch} images of {width}x{height} px are {batch * height * width / 1e6:.0f} megapixels in one run, "
            f"far beyond any accelerator's memory (at most {MAX_BATCH_PIXELS / 1e6:.0f}): make fewer or smaller images"
        )


def check_tensor(name: str, tensor: object, ndims: tuple[int, ...] = (3, 4)) -> torch.Tensor:
    """A non-empty floating-point tensor of ``ndims`` dimensions holding only finite values."""
    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"{name} must be a tensor, found {type(tensor).__name__}")
    if tensor.ndim not in ndims or tensor.numel() == 0:
        raise InputError(
            f"{name} must be a non-empty tensor of {' or '.join(map(str, ndims))} dimensions, "
            f"found shape {list(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        raise InputError(f"{name} must hold floating-point values, found {tensor.dtype}")
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise InputError(f"{name} holds {bad} NaN or infinite values of {tensor.numel()}: expected finite values")
    return tensor


def check_input_size(name: str, width: int, height: int, least: int = MIN_SIDE) -> None:
    """Refuse an init or control image of ``width`` x ``height`` px with a side under ``least``, or over
    ``MAX_IMAGE_PIXELS`` to decode. A large image is otherwise fine: it is scaled to the picture's size (a camera
    photo as an init image of a 1024 px picture); where it sets that size itself, the picture's own limits apply."""
    if min(width, height) < least:
        raise InputError(f"{name} is {width}x{height} px (width x height): expected at least {least} px a side")
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"{name} is {width}x{height} px (width x height, {width * height / 1e6:.1f} megapixels): expected at "
            f"most {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels: shrink it first"
        )


def open_image(path: str | Path, name: str = "image", least: int = MIN_SIDE) -> Image.Image:
    """An image file opened lazily (header read, pixels not yet decoded) once its upright size (``upright_size``:
    EXIF orientations 5 to 8 swap width and height) is checked by ``check_input_size``, from the header.

    Pillow's own decompression-bomb limit is replaced by ours: a file past Pillow's hard limit (twice
    ``PIL.Image.MAX_IMAGE_PIXELS``, far past ours) is refused in the pack's words, with the size its header gives.
    Raises InputError for a missing file, a file Pillow cannot read, or an image too small or too large.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name} file {path} does not exist or is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            image = Image.open(path)
    except Image.DecompressionBombError as err:
        raise InputError(f"{name} {path} {_too_large(bomb_pixels(err))}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise InputError(f"{name} {path} is not an image that can be read ({err})") from err
    try:
        check_input_size(f"{name} {path}", *upright_size(image), least)
    except InputError:
        image.close()
        raise
    return image


def _too_large(pixels: int | None) -> str:
    """What is wrong with an image Pillow refused as a decompression bomb of ``pixels`` (None: not said)."""
    limit = MAX_IMAGE_PIXELS  # Pillow's hard limit is far past ours, unless a program lowered it:
    if Image.MAX_IMAGE_PIXELS is not None:
        limit = min(limit, 2 * Image.MAX_IMAGE_PIXELS)
    found = "over Pillow's limit" if pixels is None else f"{pixels / 1e6:.1f} megapixels"
    return f"is {found} (from its header): expected at most {limit / 1e6:.1f} megapixels: shrink it first"


def opened_image(image: Image.Image | PathLike | torch.Tensor, name: str) -> Image.Image | torch.Tensor:
    """An image given as a file opened now and decoded by ``to_rgb`` (8-bit RGB, upright, transparency on black;
    check it first, ``check_image``); others as given (``prepare_image`` converts a PIL image the same way)."""
    if not isinstance(image, (str, Path)):
        return image
    with open_image(image, name) as opened:
        try:
            return to_rgb(opened)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:  # pixels broken
            raise InputError(f"{name} {image} cannot be decoded ({err})") from err


def check_image(name: str, image: object, least: int = MIN_SIDE) -> Size:
    """An init or control image in any form the pipeline takes, checked without decoding it: a file (its size read
    from its header), a PIL image, or a tensor [B,3,H,W] / [3,H,W] in [0, 1] (finite, non-empty); each of a size
    ``check_input_size`` takes, ``least`` px a side or more. Returns its (height, width) in pixels, upright for a
    file or PIL image with an EXIF orientation (``upright_size``), as the picture will use it."""
    if isinstance(image, (str, Path)):
        with open_image(image, name, least) as opened:
            width, height = upright_size(opened)
            return height, width
    if isinstance(image, Image.Image):
        width, height = upright_size(image)
    elif isinstance(image, torch.Tensor):
        height, width = int(check_tensor(name, image).shape[-2]), int(image.shape[-1])
    else:
        raise InputError(f"{name} must be an image file, a PIL image or a tensor, found {type(image).__name__}")
    check_input_size(name, width, height, least)
    return height, width


def check_images(
    init: object | None, control: object | None, names: tuple[str, str] = ("init image", "control image")
) -> Size | None:
    """An init and a control image (either may be None), each by ``check_image`` under its name in ``names``, a
    control image with ``MIN_CONTROL_SIDE`` px a side or more. Returns the init image's (height, width), or None."""
    init_size = None if init is None else check_image(names[0], init)
    if control is not None:
        check_image(names[1], control, MIN_CONTROL_SIDE)
    return init_size


PathLike = str | Path
LoraSpec = PathLike | tuple[PathLike, float]  # a LoRA file, at strength 1 or at the given strength


def lora_specs(loras: Sequence[LoraSpec] | PathLike) -> list[tuple[PathLike, float]]:
    """``loras`` as (path, strength) pairs: a path alone (or a list entry that is one) is a LoRA at strength 1.

    Raises ``InputError`` naming the entry for anything else (a dict, ``None``, a pair without a number)."""
    if isinstance(loras, (str, Path)):
        loras = [loras]
    if not isinstance(loras, (list, tuple)):
        raise InputError(f"loras: expected a list of paths or (path, strength) pairs, found {loras!r}")
    specs = []
    for entry in loras:
        if isinstance(entry, (str, Path)):
            specs.append((entry, 1.0))
        elif isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], (str, Path)):
            specs.append((entry[0], check_strength(entry[1], f"the strength of the LoRA entry {entry!r}")))
        else:
            raise InputError(f"loras: expected a path or a (path, strength) pair, found the entry {entry!r}")
    return specs


def named_image(name: str, image: object) -> str:
    """``name`` of an image, with its path where it is given as a file (as ``arguments.open_image`` names it)."""
    return f"{name} {image}" if isinstance(image, (str, Path)) else name


def check_size_to_draw(asked: Size, bins: tuple[Size, ...] | None, batch: int, source: str) -> Size:
    """The size to generate ``batch`` pictures of ``asked`` px at: the bin nearest to it among ``bins``, else that
    size itself. Raises InputError for a size that cannot be drawn or a batch beyond memory; ``source`` (where the
    size came from, when not the caller's width and height) leads the error, which then says how to choose one."""
    try:
        check_image_size(*asked, multiple=1 if bins else SIZE_MULTIPLE)
        size = nearest_bin(*asked, bins) if bins else asked
        check_image_size(*size)
        check_batch(batch, *size)
    except InputError as err:
        if not source:
            raise
        raise InputError(
            f"{source}, the picture's size when no width or height is given: {err}; give a width and height "
            f"(--width and --height on the command line)"
        ) from None
    return size


def negatives_to_encode(negatives: list[str] | None, count: int, guided: bool, null_caption: bool) -> list[str] | None:
    """The negative prompts given (None: none), checked to be one per prompt; or None where they are not encoded (the
    learned null caption, or no guidance at all), or the empty prompt for each prompt.

    Without a negative prompt, guidance uses the model's learned null caption where the file has one
    (the reference), else the empty prompt encoded by T5 (diffusers' unconditional input).
    """
    if negatives is not None and not guided:
        log.warning("a negative prompt only acts with guidance above 1: it is ignored")
        return None
    if negatives is None:
        if not guided:
            return None
        if null_caption:
            log.info("unconditional input: the model's learned null caption (no negative prompt given)")
            return None
        log.info("unconditional input: the empty prompt (the model file has no learned null caption)")
        return [""] * count
    log.info("unconditional input: the negative prompt")
    if len(negatives) != count:
        raise InputError(f"{len(negatives)} negative prompts for {count} prompts: give one, or one per prompt")
    return negatives
