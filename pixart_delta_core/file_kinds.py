"""What a path is, in words, for the engine's messages about paths it cannot use (a FIFO or a device would
block ``open`` forever; a regular file cannot hold a data set), and which part of a path stops it being a folder."""

from __future__ import annotations

import stat
from pathlib import Path

from .errors import InputError

_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """A path's ``st_mode`` in words: "a regular file", "a folder", "a FIFO (named pipe)", "a character device",
    "a block device", "a socket", else "a special file (mode 0o...)"."""
    return next((what for test, what in _KINDS if test(mode)), f"a special file (mode {oct(mode)})")


def non_folder_part(path: Path) -> tuple[Path, str] | None:
    """The part of ``path`` that stops it being a folder or being made as one, with its kind in words
    (``file_kind``): the nearest part that exists (``path`` itself, else its nearest parent) when that part is
    not a folder; None when it is one. Raises OSError when a part cannot be looked at (no permission)."""
    for part in (path, *path.parents):  # a relative path ends at ".", which is there
        try:
            mode = part.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        return None if stat.S_ISDIR(mode) else (part, file_kind(mode))
    return None


def exists(path: Path) -> bool:
    """``path.exists()``, but a path the file system refuses to look up at all (a name over its length limit, which
    ``Path.exists`` raises as OSError) is the user's input error: InputError naming the path and the reason."""
    try:
        return path.exists()
    except OSError as err:
        raise InputError(f"{path}: not a path this file system can look up ({err.strerror or err})") from None
