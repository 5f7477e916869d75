"""Datasets: a folder of images with same-name ``.txt`` captions, or a JSONL list of records.

A JSONL line is ``{"image": PATH, "caption": TEXT}``, with ``"control": PATH`` for a given control
image; paths are relative to the JSONL file. Images are fitted to their aspect-ratio bin (the
reference's multi-scale training, ``pipeline/resolution.py``) or to a centre square, and every batch
holds records of one bin (``BatchOrder``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import InputError
from ..pipeline.images import from_pil, resize_and_crop
from ..pipeline.resolution import ASPECT_RATIO_BINS, Size, nearest_bin

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Record:
    """One training example: an image, its caption, and optionally its control image."""

    image: Path
    caption: str
    control: Path | None = None


def read_records(path: Path) -> list[Record]:
    """The records of a dataset folder or JSONL file; ``InputError`` for missing captions or files, or when
    every caption is empty (a warning with their count when some are: they train as unconditional samples)."""
    if path.is_dir():
        records = _folder_records(path)
    elif path.suffix == ".jsonl" and path.is_file():
        records = _jsonl_records(path)
    else:
        raise InputError(f"a dataset is a folder of images with .txt captions or a .jsonl file, found {path}")
    if not records:
        raise InputError(f"dataset {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    absent = [str(p) for r in records for p in (r.image, r.control) if p is not None and not p.is_file()]
    if absent:
        raise InputError(f"dataset {path} names {len(absent)} file(s) that do not exist, e.g. {absent[:3]}")
    empty = [r.image.name for r in records if not r.caption]
    if len(empty) == len(records):
        raise InputError(f"dataset {path} has no captions: all {len(records)} are empty")
    if empty:
        log.warning("%d of %d captions in %s are empty (e.g. %s): they train as unconditional samples",
                    len(empty), len(records), path, empty[:3])  # fmt: skip
    return records


def check_images(records: list[Record]) -> None:
    """``InputError`` naming the first image or control image that cannot be read (headers checked, not
    decoded: cheap enough to run before a long cache build)."""
    for path in (p for r in records for p in (r.image, r.control) if p is not None):
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # PIL raises many kinds (UnidentifiedImageError, SyntaxError, OSError...)
            raise InputError(f"the image {path} cannot be read: {err}") from None


def _folder_records(folder: Path) -> list[Record]:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    uncaptioned = [p.name for p in images if not p.with_suffix(".txt").is_file()]
    if uncaptioned:
        raise InputError(
            f"{len(uncaptioned)} image(s) in {folder} have no same-name .txt caption, e.g. {uncaptioned[:3]}"
        )
    return [Record(p, p.with_suffix(".txt").read_text(encoding="utf-8").strip()) for p in images]


def _jsonl_records(path: Path) -> list[Record]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path} line {number} is not JSON: {err}") from None
        if not isinstance(item, dict) or not isinstance(item.get("image"), str):
            raise InputError(f'{path} line {number}: expected an object with an "image" path, found {line[:80]!r}')
        if not isinstance(item.get("caption"), str):
            raise InputError(f'{path} line {number}: expected a "caption" string, found {item.get("caption")!r}')
        unknown = sorted(set(item) - {"image", "caption", "control"})
        if unknown:
            raise InputError(f"{path} line {number}: unknown field(s) {unknown} (image, caption, control)")
        control = path.parent / item["control"] if isinstance(item.get("control"), str) else None
        records.append(Record(path.parent / item["image"], item["caption"].strip(), control))
    return records


def training_size(image_size: tuple[int, int], resolution: int, multi_scale: bool) -> Size:
    """The (height, width) in px an image of ``image_size`` (width, height: ``pictures.upright_size``) trains at.

    Multi-scale: the aspect-ratio bin nearest to the image's, at ``resolution``; else a square.
    """
    if not multi_scale:
        return resolution, resolution
    bins = ASPECT_RATIO_BINS.get(resolution)
    if bins is None:
        raise InputError(
            f"no aspect-ratio bins at {resolution} px (bins exist for {', '.join(map(str, ASPECT_RATIO_BINS))} px): "
            f"set data.multi_scale = false to train on squares"
        )
    width, height = image_size
    return nearest_bin(height, width, bins)


def load_image(path: Path, size: Size) -> torch.Tensor:
    """An image file -> [1, 3, height, width] in [-1, 1] (read by ``pictures.to_rgb``: upright, transparency
    onto black), scaled to cover ``size`` and centre-cropped."""
    with Image.open(path) as image:
        pixels = from_pil(image)
    return resize_and_crop(pixels, *size, antialias=True)


class BatchOrder:
    """Global batches of record indices, each from one size (aspect-ratio bin), shuffled per epoch from the seed."""

    def __init__(self, sizes: list[tuple[int, int]], batch_size: int, seed: int) -> None:
        self.groups: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(sizes):
            self.groups.setdefault(size, []).append(index)
        self.batch_size, self.seed = batch_size, seed
        self.per_epoch = sum(len(g) // batch_size for g in self.groups.values())
        if self.per_epoch == 0:
            largest = max(len(g) for g in self.groups.values())
            raise InputError(
                f"train.batch_size {batch_size} is larger than every aspect-ratio bin of the dataset (the largest "
                f"holds {largest} of its {len(sizes)} records): lower the batch size or set data.multi_scale = false"
            )

    def batch(self, number: int) -> list[int]:
        """The ``number``-th global batch of the run (epochs follow each other)."""
        epoch, index = divmod(number, self.per_epoch)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        batches = []
        for size in sorted(self.groups):
            group = self.groups[size]
            shuffled = [group[i] for i in torch.randperm(len(group), generator=generator).tolist()]
            batches += [
                shuffled[i : i + self.batch_size] for i in range(0, len(group) - self.batch_size + 1, self.batch_size)
            ]
        order = torch.randperm(len(batches), generator=generator).tolist()
        return batches[order[index]]
