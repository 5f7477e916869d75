"""``train`` refuses a config it cannot use in one line, before any long work: a config path that is not a
readable UTF-8 TOML file, an output it cannot create, model files of the wrong kind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from pixart_delta_core.cli import main
from pixart_delta_core.training.config_file import config_from_dict
from tests.helpers import ROOT
from tests.test_training_data import run_table, tiny_setup

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    return tiny_setup(tmp_path_factory.mktemp("refusals"), control=False)


def _config(setup: dict, tmp_path: Path, output: Path, method: str = "base", **model: str) -> Path:
    table = run_table(setup, output, batch_size=2, steps=1)
    table["model"] = {**table["model"], **model}
    path = tmp_path / "run.toml"
    path.write_text(config_from_dict(table, method).to_toml())
    return path


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


def test_an_output_that_cannot_be_made_is_refused_before_the_cache(setup, tmp_path, capsys) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for output, said in ((taken, f"{taken} is a regular file"), (taken / "run", f"{taken} is a regular file")):
        config = _config(setup, tmp_path, output)
        assert said in _refused(["train", "base", "--config", str(config)], capsys)
    if Path("/proc/self").exists():
        config = _config(setup, tmp_path, Path("/proc/pixart-delta-run"))
        assert "no folder can be created in /proc" in _refused(["train", "base", "--config", str(config)], capsys)
    assert not list(tmp_path.glob(".pixart-delta-check-*"))


def test_model_files_of_another_kind_are_refused_by_their_config_key(setup, tmp_path, capsys) -> None:
    taesd = ROOT / "pixart_delta_core" / "embedded_model" / "vae" / "shapes-taesd.safetensors"
    config = _config(setup, tmp_path, tmp_path / "out", t5=str(taesd))
    said = _refused(["train", "base", "--config", str(config)], capsys)
    assert f"error: model.t5 {taesd}: not a T5 text encoder" in said and "--tokenizer" not in said
    picture = tmp_path / "picture.png"
    Image.new("RGB", (8, 8)).save(picture)
    config = _config(setup, tmp_path, tmp_path / "out", vae=str(picture))
    assert f"error: model.vae {picture}: " in _refused(["train", "base", "--config", str(config)], capsys)


def test_without_a_method_on_the_command_line_the_files_is_taken(setup, tmp_path, capsys) -> None:
    config = _config(setup, tmp_path, tmp_path / "out", method="lcm")
    assert main(["train", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert 'method = "lcm"' in printed and "trained 1 steps" in printed
    text = config.read_text()
    config.write_text(text.replace('method = "lcm"', ""))
    said = _refused(["train", "--config", str(config)], capsys)
    assert "no training method: expected one of" in said and "found neither" in said
    config.write_text(text.replace('method = "lcm"', 'method = "dreambooth"'))
    assert "method must be one of" in _refused(["train", "--config", str(config)], capsys)
