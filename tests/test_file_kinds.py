"""What a path is, in words, and the part of a path that stops it being (or becoming) a folder: the base both the
output checks (pipeline/outputs.py) and the world's data set folder (world/dataset.py) ask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pixart_delta_core.file_kinds import file_kind, non_folder_part


def test_each_kind_is_named() -> None:
    assert file_kind(stat.S_IFREG | 0o644) == "a regular file"
    assert file_kind(stat.S_IFDIR | 0o755) == "a folder"
    assert file_kind(stat.S_IFCHR) == "a character device"
    assert file_kind(0) == "a special file (mode 0o0)"


def test_the_nearest_part_that_is_there_decides(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    assert non_folder_part(tmp_path) is None  # a folder
    assert non_folder_part(tmp_path / "new" / "deeper") is None  # can be made under a folder
    assert non_folder_part(tmp_path / "file") == (tmp_path / "file", "a regular file")
    assert non_folder_part(tmp_path / "file" / "a" / "b") == (tmp_path / "file", "a regular file")
    monkeypatch.chdir(tmp_path)
    assert non_folder_part(Path("new/deeper")) is None  # a relative path ends at the current folder
    assert non_folder_part(Path("file/a")) == (Path("file"), "a regular file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_on_the_way_is_named(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    assert non_folder_part(tmp_path / "fifo" / "x") == (tmp_path / "fifo", "a FIFO (named pipe)")
