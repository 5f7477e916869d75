"""Writing generated images: file names that say which prompt made each image, and the generation
parameters in each PNG's ``parameters`` text chunk (the key ComfyUI, A1111-style tools and image
viewers read), so a picture says where it came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..errors import InputError


@dataclass(frozen=True)
class RunRecord:
    """What made a batch of images: the settings and model files, as written beside each image."""

    prompts: Sequence[str]
    negative_prompt: str | None
    seed: int
    steps: int
    sampler: str
    guidance: float
    size: tuple[int, int]  # (height, width) in pixels, as written
    models: Mapping[str, str]  # role ("Model", "T5", "VAE"...) -> file name

    def parameters(self, prompt_index: int, image_index: int) -> str:
        """The text of the ``parameters`` chunk for one image: prompt, negative, then one settings line."""
        fields = [
            ("Steps", self.steps),
            ("Sampler", self.sampler),
            ("CFG scale", self.guidance),
            ("Seed", self.seed),
            ("Size", f"{self.size[1]}x{self.size[0]}"),
            ("Batch index", image_index),
            *self.models.items(),
        ]
        lines = [self.prompts[prompt_index]]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        lines.append(", ".join(f"{key}: {value}" for key, value in fields))
        return "\n".join(lines)


def check_output(path: Path) -> None:
    """Refuse, before any work, an output Pillow cannot write: an unknown extension, a folder, or a place
    where no file can be made. The folder is created if missing. Raises InputError."""
    if path.is_dir():
        raise InputError(f"output {path} is a folder: give a file name such as {path / 'image.png'}")
    extensions = Image.registered_extensions()
    suffix = path.suffix.lower()
    if extensions.get(suffix) not in Image.SAVE:
        writable = sorted(e for e, f in extensions.items() if f in Image.SAVE and e in (".png", ".jpg", ".webp"))
        raise InputError(f"output {path}: {suffix or 'no extension'} is not an image format ({', '.join(writable)})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"output folder {path.parent} cannot be made ({err.strerror})") from err
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"output {path} cannot be written (no permission)")


def output_paths(out: Path, prompts: int, per_prompt: int) -> list[Path]:
    """``x.png`` for one image; else ``x-p{prompt}-{n}.png``, in the order images are made (prompt by prompt)."""
    if prompts * per_prompt == 1:
        return [out]
    return [out.with_name(f"{out.stem}-p{p}-{n}{out.suffix}") for p in range(prompts) for n in range(per_prompt)]


def save_images(images: Sequence[Image.Image], out: Path, record: RunRecord) -> list[Path]:
    """Write each image (PNGs with their ``parameters`` chunk); the paths written, in order."""
    per_prompt = len(images) // len(record.prompts)
    paths = output_paths(out, len(record.prompts), per_prompt)
    for index, (path, image) in enumerate(zip(paths, images, strict=True)):
        options = {}
        if path.suffix.lower() == ".png":
            info = PngInfo()
            info.add_text("parameters", record.parameters(index // per_prompt, index % per_prompt))
            options["pnginfo"] = info
        image.save(path, **options)
    return paths
