"""Content fingerprints, cheap enough to take at every run: what the feature cache's key is made of.

A model file is known by its contents, not its path (a copy elsewhere is the same model, a file replaced
in place is another): a safetensors file by its header (names, dtypes, shapes), its size and samples of
its tensor bytes at fixed offsets (any fine-tune moves nearly every weight, so the samples see it without
reading gigabytes); other files (configs, tokenizers) by all their bytes, or samples of them above
``WHOLE_FILE`` bytes. A dataset is known by its records: image and control paths, their sizes and
modification times, and the captions.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from ..errors import InputError
from .data import Record

SAMPLES = 16  # chunks read from a large file
SAMPLE_BYTES = 1 << 16
WHOLE_FILE = 1 << 24  # files up to this size are hashed whole


def model_fingerprint(path: Path, setting: str) -> str:
    """A hex digest of the model file or folder ``path`` (every file under a folder, by relative name).

    Raises ``InputError`` naming ``setting`` (e.g. ``model.t5``) when ``path`` does not exist.
    """
    if not path.exists():
        raise InputError(f"{setting} {path} does not exist: give the path of its file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        _hash_file(file, digest)
    return digest.hexdigest()


def dataset_fingerprint(records: list[Record], root: Path) -> str:
    """A hex digest of the records: paths (relative to the dataset ``root``), file sizes, mtimes, captions."""
    digest = hashlib.sha256()
    base = root if root.is_dir() else root.parent
    for record in records:
        for path in (record.image, record.control):
            if path is None:
                digest.update(b"-\0")
                continue
            stat = path.stat()
            name = path.relative_to(base) if path.is_relative_to(base) else path
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        digest.update(record.caption.encode() + b"\0")
    return digest.hexdigest()


def _hash_file(file: Path, digest: hashlib._Hash) -> None:
    size = file.stat().st_size
    digest.update(str(size).encode() + b"\0")
    with file.open("rb") as f:
        if file.suffix == ".safetensors" and size >= 8:
            (length,) = struct.unpack("<Q", f.read(8))
            digest.update(f.read(min(length, size - 8)))
        if size <= WHOLE_FILE:
            f.seek(0)
            digest.update(f.read())
            return
        for index in range(SAMPLES):  # evenly spaced over the file, the last chunk ending at its end
            f.seek((size - SAMPLE_BYTES) * index // (SAMPLES - 1))
            digest.update(f.read(SAMPLE_BYTES))
