"""Writing generated images: file names that say which prompt made each image, and the generation
parameters in each PNG's ``parameters`` text chunk (the key ComfyUI, A1111-style tools and image
viewers read), so a picture says where it came from.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import NamedTuple

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..checkpoints.sources import printable_path
from ..errors import InputError, first_line
from ..file_kinds import file_kind, non_folder_part


@dataclass(frozen=True)
class RunRecord:
    """What made a batch of images: the settings and model files, as written beside each image."""

    prompts: Sequence[str]
    negative_prompt: str | Sequence[str] | None  # one for every prompt, or one per prompt
    seed: int
    steps: int
    sampler: str
    guidance: float
    size: tuple[int, int]  # (height, width) in pixels, as written
    models: Mapping[str, str]  # role ("Model", "T5", "VAE"...) -> file name
    # Further settings that changed the picture, only where not at their defaults (``picture_settings``)
    settings: Mapping[str, str] = field(default_factory=dict)

    def parameters(self, prompt_index: int, image_index: int) -> str:
        """The text of the ``parameters`` chunk for one image: prompt, negative, then one settings line of ``Key:
        value`` pairs, a value holding a comma, colon or line break quoted as JSON (as A1111 writes it)."""
        fields = [
            ("Steps", self.steps),
            ("Sampler", self.sampler),
            ("CFG scale", self.guidance),
            ("Seed", self.seed),
            ("Size", f"{self.size[1]}x{self.size[0]}"),
            ("Batch index", image_index),
            *self.models.items(),
            *self.settings.items(),
        ]
        lines = [self.prompts[prompt_index]]
        negative = self.negative_prompt
        if negative is not None and not isinstance(negative, str):
            negative = negative[prompt_index]
        if negative:
            lines.append(f"Negative prompt: {negative}")
        lines.append(", ".join(f"{key}: {_quoted(str(value))}" for key, value in fields))
        return "\n".join(lines)


def _quoted(value: str) -> str:
    """``value`` as A1111's ``quote`` writes it in a settings line: as it is, or in JSON quotes where a comma, colon
    or line break would split the line into other pairs."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value


def picture_settings(
    *,
    strength: float = 1.0,
    lcm_timesteps: str | None = None,
    clean_caption: bool = False,
    loras: Sequence[tuple[str, float]] = (),
    lora_controlnet: bool = False,
    control: tuple[str, float, float, float] | None = None,
    quantization: str = "none",
    t5_quantization: str = "none",
) -> dict[str, str]:
    """The settings beyond ``RunRecord``'s own that changed the picture, each only where not at its default, in
    the ``Key: value`` words other tools write: an image-to-image ``strength`` below 1 ("Denoising strength"; Steps
    stays the number asked, of which the last steps x strength ran), the LCM timesteps where given, whether the
    captions were cleaned, the ``loras`` (file name, strength), whether the ControlNet took them too, the
    ControlNet's (image file name, strength, start, end) in ``control`` (the image always, the others where not at
    the reference's), and the quantization of the transformer and T5 weights."""
    settings = {}
    if strength < 1.0:
        settings["Denoising strength"] = f"{strength:g}"
    if lcm_timesteps is not None:
        settings["LCM timesteps"] = lcm_timesteps
    if clean_caption:
        settings["Clean caption"] = "yes"
    if loras:
        settings["Lora"] = ", ".join(f"{name}: {weight:g}" for name, weight in loras)
        if lora_controlnet and control is not None:
            settings["Lora on ControlNet"] = "yes"
    if control is not None:
        image, *window = control
        settings["Control image"] = image
        for key, value, default in zip(("strength", "start", "end"), window, (1.0, 0.0, 1.0), strict=True):
            if value != default:
                settings[f"ControlNet {key}"] = f"{value:g}"
    for key, value in (("Quantization", quantization), ("T5 quantization", t5_quantization)):
        if value != "none":
            settings[key] = value
    return settings


def check_output(out: Path, prompts: int = 1, per_prompt: int = 1, *, keep_earlier: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: a link, a folder, an extension Pillow does not write,
    or a place where a file of each name ``save_images`` will write (``output_paths``; with ``keep_earlier``, those
    of ``free_output``) cannot be made. Leaves the disk as it was: a missing folder is made to try the names in,
    then removed (``save_images`` makes it). Every OS error (a name too long, /proc) becomes an InputError."""
    if keep_earlier:
        out = free_output(out, prompts, per_prompt)
    try:
        for path in output_paths(out, prompts, per_prompt):  # the save would write through it into another file
            if path.is_symlink():
                target = path.parent / os.readlink(path)
                raise InputError(
                    f"output {printable_path(path)} is a link to {printable_path(target)}: the picture would be "
                    f"written into that file; give another name, or the file itself"
                )
        if out.is_dir():
            raise InputError(
                f"output {printable_path(out)} is a folder: give a file name such as "
                f"{printable_path(out / 'image.png')}"
            )
        if out.exists() and not out.is_file():
            found = file_kind(out.stat().st_mode)
            raise InputError(
                f"output {printable_path(out)}: expected an image file to write, found {found}: give a file name "
                f"such as image.png"
            )
        suffix = out.suffix.lower()
        if suffix not in (writable := writable_extensions()):
            found = f"{suffix} is not an image format Pillow writes" if suffix else "the name has no extension"
            raise InputError(
                f"output {printable_path(out)}: {found}: give one such as .png (the generation parameters go into "
                f"it) or .jpg (any case; all: {', '.join(writable)})"
            )
        blocked = non_folder_part(out.parent)
        if blocked is not None:
            part, kind = blocked
            raise InputError(f"output {printable_path(out)}: {printable_path(part)} is {kind}, not a folder")
        missing = [folder for folder in (out.parent, *out.parent.parents) if not folder.exists()]  # deepest first
        try:
            make_output_folder(out)
            for path in output_paths(out, prompts, per_prompt):
                _open_as_saving_will(path)
        finally:
            for folder in missing:  # those this check made, deepest first; one another process filled stays
                with contextlib.suppress(OSError):
                    folder.rmdir()
    except OSError as err:
        where = printable_path(out if err.filename is None else err.filename)
        raise InputError(f"output {where} cannot be written ({err.strerror or first_line(err)})") from err


def make_output_folder(out: Path) -> None:
    """Make ``out``'s folder and those above it that are missing; InputError when one cannot be made."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"output folder {printable_path(out.parent)} cannot be made ({err.strerror})") from err


@cache
def writable_extensions() -> list[str]:
    """The lower-case extensions ``check_output`` accepts, sorted: those of the formats this Pillow can write an
    RGB picture in. Pillow registers savers that cannot (XBM: 1-bit only; WMF, GRIB, HDF5: stubs needing a
    handler), so each format is tried once on a 1 x 1 picture in memory."""
    return sorted(e for e, f in Image.registered_extensions().items() if f in Image.SAVE and _saves_rgb(f))


def _saves_rgb(image_format: str) -> bool:
    try:
        with warnings.catch_warnings():  # a deprecated format's warning is the saver's business, not the check's
            warnings.simplefilter("ignore")
            Image.new("RGB", (1, 1)).save(io.BytesIO(), image_format)
    except Exception:  # a saver may fail in any way; all that matters is whether it wrote
        return False
    return True


def _open_as_saving_will(path: Path) -> None:
    """Open ``path`` for writing, as saving will, and leave everything as it was: a new file is made and removed,
    an existing one opened to append nothing. Raises the OSError the save would meet.

    A probe, not os.access(folder, W_OK): root passes that in /proc and /sys, where no file can be made, and it
    cannot see a name too long or a file system's own refusals; opening the file is what the save does."""
    flags = os.O_WRONLY | getattr(os, "O_NONBLOCK", 0)  # an existing FIFO of that name must not block the check
    try:
        os.close(os.open(path, flags | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        os.close(os.open(path, flags | os.O_APPEND))
    else:
        os.remove(path)


def output_paths(out: Path, prompts: int, per_prompt: int) -> list[Path]:
    """``x.png`` for one image; else ``x-p{prompt}-{n}.png``, in the order images are made (prompt by prompt), both
    numbers counted from 1 as the prompts are in messages (the second --prompt's first picture: ``x-p2-1.png``)."""
    if prompts * per_prompt == 1:
        return [out]
    numbers = [(p, n) for p in range(1, prompts + 1) for n in range(1, per_prompt + 1)]
    return [out.with_name(f"{out.stem}-p{p}-{n}{out.suffix}") for p, n in numbers]


def free_output(out: Path, prompts: int, per_prompt: int) -> Path:
    """``out``, else the first of ``x-1.png``, ``x-2.png``... where none of the files ``output_paths`` names is
    there yet: the output of a run that replaces no earlier picture (all its images under one free stem)."""
    return _numbered(out, _first_free(out, prompts, per_prompt))


def claim_free_output(out: Path, prompts: int, per_prompt: int) -> list[Path]:
    """The files ``output_paths`` names under ``free_output``'s stem, claimed: each made, empty, by an exclusive
    create, so that a run saving at the same instant that looked at the same free stem takes the next one. A stem
    where any file appeared after the look is given up (its files made so far removed) for the next free one."""
    n = 0
    while True:
        n = _first_free(out, prompts, per_prompt, n)
        paths = output_paths(_numbered(out, n), prompts, per_prompt)
        if _claim(paths):
            return paths
        n += 1


def _numbered(out: Path, n: int) -> Path:
    """``x.png`` for 0, else ``x-{n}.png``."""
    return out if n == 0 else out.with_name(f"{out.stem}-{n}{out.suffix}")


def _first_free(out: Path, prompts: int, per_prompt: int, start: int = 0) -> int:
    """The first ``n`` from ``start`` where no file ``output_paths`` names under ``_numbered(out, n)`` is there (a
    dangling link, a folder: taken)."""
    n = start
    while any(os.path.lexists(path) for path in output_paths(_numbered(out, n), prompts, per_prompt)):
        n += 1
    return n


def _claim(paths: list[Path]) -> bool:
    """Make each of ``paths``, empty, by an exclusive create (atomic: of two runs making one name, one fails); True
    when all were made. Where one is there already, False; on another error, the error. Either way those made are
    removed."""
    made: list[Path] = []
    try:
        for path in paths:
            open(path, "xb").close()  # made and closed: the save writes it
            made.append(path)
        return True
    except FileExistsError:
        return False
    finally:
        if len(made) < len(paths):
            _remove(made)


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.remove(path)


class Written(NamedTuple):
    """A file ``save_images`` wrote, and whether an earlier file of that name was replaced."""

    path: Path
    replaced: bool


def save_images(
    images: Sequence[Image.Image], out: Path, record: RunRecord, *, keep_earlier: bool = False
) -> list[Written]:
    """Write each image (PNGs with their ``parameters`` chunk), making ``out``'s folder if missing; what was written,
    in order. An earlier file of a name is replaced, unless ``keep_earlier``: then the names are ``free_output``'s,
    claimed as the images are written (``claim_free_output``: two runs at the same instant write different files),
    and a save that fails leaves none of the claimed names it did not write."""
    per_prompt = len(images) // len(record.prompts)
    make_output_folder(out)
    if keep_earlier:
        paths = claim_free_output(out, len(record.prompts), per_prompt)
    else:
        paths = output_paths(out, len(record.prompts), per_prompt)
    written: list[Written] = []
    try:
        for index, (path, image) in enumerate(zip(paths, images, strict=True)):
            replaced = not keep_earlier and os.path.lexists(path)  # a claimed name is this run's own
            save_picture(image, path, record.parameters(index // per_prompt, index % per_prompt))
            written.append(Written(path, replaced))
    finally:
        if keep_earlier and len(written) < len(paths):
            _remove(paths[len(written) :])
    return written


def save_picture(image: Image.Image, path: Path, parameters: str | None = None) -> None:
    """Save ``image`` at ``path``, its format by the name's extension; a PNG keeps ``parameters`` (the prompt's
    lines, then the settings) in its ``parameters`` text chunk, where judge and other tools read them."""
    options = {}
    if parameters is not None and path.suffix.lower() == ".png":
        info = PngInfo()
        info.add_text("parameters", parameters)
        options["pnginfo"] = info
    image.save(path, **options)
