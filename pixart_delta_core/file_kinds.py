"""What a path is, in words, for the engine's messages about paths it cannot use (a FIFO or a device would
block ``open`` forever; a regular file cannot hold a data set)."""

from __future__ import annotations

import stat

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
