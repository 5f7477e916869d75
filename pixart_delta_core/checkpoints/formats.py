"""Telling checkpoint formats apart by their structure, never by a file name or a single byte."""

from __future__ import annotations

import enum
import os
import stat
import struct
from pathlib import Path

from ..errors import CheckpointError
from ..file_kinds import file_kind
from .sources import printable_path, reading

MAX_HEADER_BYTES = 100_000_000
"""The largest safetensors header the format allows (the safetensors library's own limit)."""


class CheckpointFormat(enum.Enum):
    """The file formats the pack reads."""

    SAFETENSORS = "safetensors"
    TORCH_ZIP = "PyTorch zip archive"
    TORCH_LEGACY = "PyTorch legacy pickle"


def path_kind(path: Path) -> int:
    """The ``stat`` mode of ``path`` once it is known to be a regular file or a folder.

    Raises ``CheckpointError`` for anything else (a FIFO or device would block ``open`` forever) and for
    every OS error (missing, unreadable, a name too long), naming the path.
    """
    name = printable_path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as err:
        raise CheckpointError(f"{name}: no such file or folder") from err
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the name
        raise CheckpointError(f"{name}: cannot read: {getattr(err, 'strerror', None) or err}") from err
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise CheckpointError(
            f"{name}: expected a checkpoint file or a model folder, found {file_kind(mode)}; only regular "
            f"files and folders are read"
        )
    return mode


def check_regular_file(path: Path) -> None:
    """Raise ``CheckpointError`` unless ``path`` is a regular file (see ``path_kind``)."""
    if stat.S_ISDIR(path_kind(path)):
        raise CheckpointError(f"{printable_path(path)}: expected a checkpoint file, found a folder")


def sniff_format(path: Path) -> CheckpointFormat:
    """The format of the checkpoint file ``path``, from its structure.

    safetensors: an 8-byte little-endian header length that fits the file, then ``{``. A PyTorch zip
    archive: a zip local file header (``PK\\x03\\x04``). A legacy PyTorch file: a pickle protocol opcode
    (``\\x80`` then 2 to 5), when the bytes are not a safetensors header (a header length's low byte
    can be 0x80). The name is never looked at: a ``.pth`` renamed ``.safetensors`` reads as the ``.pth``
    it is. Raises ``CheckpointError`` for anything else, saying what it is where it is a well-known kind (a
    picture, a compressed file, JSON text), else what its first bytes look like.
    """
    check_regular_file(path)
    with reading(path), open(path, "rb") as f:
        head = f.read(16)
        size = f.seek(0, 2)
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= min(MAX_HEADER_BYTES, size - 8):
            return CheckpointFormat.SAFETENSORS
    if head[:4] == b"PK\x03\x04":
        return CheckpointFormat.TORCH_ZIP
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return CheckpointFormat.TORCH_LEGACY
    raise CheckpointError(f"{printable_path(path)}: {_not_a_checkpoint(head, size)}; {EXPECTED}")


EXPECTED = (
    "expected a .safetensors file (an 8-byte header length, then a JSON header) or a PyTorch .pth/.bin file (a zip "
    "archive or a pickle)"
)
"""What a checkpoint file is, for the errors about a file that is none."""

# Files often given for a checkpoint by mistake, by their magic numbers: (the first bytes, the bytes from the 9th on,
# what the file is, how a checkpoint inside it is got at).
_KNOWN_KINDS = (
    (b"\x89PNG\r\n\x1a\n", b"", "a PNG picture", ""),
    (b"\xff\xd8\xff", b"", "a JPEG picture", ""),
    (b"GIF8", b"", "a GIF picture", ""),
    (b"RIFF", b"WEBP", "a WebP picture", ""),  # "RIFF", a length, then the kind: a RIFF file of another is not named
    (b"II*\x00", b"", "a TIFF picture", ""),
    (b"MM\x00*", b"", "a TIFF picture", ""),
    (b"%PDF-", b"", "a PDF document", ""),
    (b"\x1f\x8b\x08", b"", "a gzip-compressed file", "decompress"),
    (b"\xfd7zXZ\x00", b"", "an xz-compressed file", "decompress"),
    (b"7z\xbc\xaf\x27\x1c", b"", "a 7-Zip archive", "extract"),
)


def _not_a_checkpoint(head: bytes, size: int) -> str:
    """What the file whose first bytes are ``head`` (of ``size`` in all) is, when it is no checkpoint: a well-known
    kind by name ("a PNG picture, not a checkpoint"), else what its bytes look like ("not a checkpoint: ...")."""
    for first, then, what, unpack in _KNOWN_KINDS:
        if head.startswith(first) and head[8:].startswith(then):
            return f"{what}, not a checkpoint" + (f" ({unpack} it first if a checkpoint is inside)" if unpack else "")
    if head.lstrip()[:1] in (b"{", b"[") and b"\x00" not in head[:8]:  # a header length of 8 text bytes is > 2^56
        return f"JSON text ({head.decode('utf-8', 'backslashreplace')!r}...), perhaps a config, not a checkpoint"
    return f"not a checkpoint: {_looks_like(head, size)}"


def _looks_like(head: bytes, size: int) -> str:
    if size == 0:
        return "the file is empty (0 bytes)"
    if head[:4] == b"GGUF":
        return "this is a GGUF file"
    if head[:4] in (b"PK\x05\x06", b"PK\x07\x08"):
        return "an empty or split zip archive"
    if head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        return f"a safetensors header claiming {header_len} bytes, in a file of {size} (truncated or damaged)"
    if head.startswith(b"version https:"):
        return "a Git LFS pointer, not the file it points to"
    if head.lstrip()[:1] in (b"<", b"{"):
        return f"text ({head.decode('utf-8', 'backslashreplace')!r}...), perhaps a web page or a config"
    return f"its first bytes are {head[:8].hex(' ')} ({size} bytes in all)"
