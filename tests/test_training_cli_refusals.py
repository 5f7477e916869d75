"""``train`` refuses a config it cannot use in one line, before any long work: a config path that is not a
readable UTF-8 TOML file, an output it cannot create, model files of the wrong kind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pixart_delta_core.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _refused(argv: list[str], capsys) -> str:
    assert main(argv) == 1
    printed = capsys.readouterr()
    assert printed.out == "" and "Traceback" not in printed.err, printed.err[-2000:]
    assert len(printed.err.strip().splitlines()) == 1, printed.err
    return printed.err


def test_a_config_that_is_no_readable_utf8_file_is_refused_in_one_line(tmp_path, capsys, monkeypatch) -> None:
    assert "expected a TOML file, found a folder" in _refused(["train", "lora", "--config", str(tmp_path)], capsys)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # open() would block forever
    assert "expected a TOML file, found a FIFO" in _refused(["train", "lora", "--config", str(fifo)], capsys)
    latin = tmp_path / "latin.toml"
    latin.write_bytes('method = "lora" # caf\xe9\n'.encode("latin-1"))
    assert "expected UTF-8 TOML text" in _refused(["train", "lora", "--config", str(latin)], capsys)
    png = tmp_path / "picture.toml"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
    assert "expected UTF-8 TOML text" in _refused(["train", "lora", "--config", str(png)], capsys)
    locked = tmp_path / "locked.toml"
    locked.write_text('method = "lora"\n')

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # chmod 000 does not stop root
    assert "cannot read it (Permission denied)" in _refused(["train", "lora", "--config", str(locked)], capsys)
