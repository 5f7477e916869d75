"""Odd paths (kind 7 of what loading guarantees): FIFOs and device files refused without blocking, over-long and
non-UTF-8 names, missing files and unreadable or mismatched shard indexes, each the engine's own error."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from pixart_delta_core.checkpoints.files import open_checkpoint
from pixart_delta_core.cli import main
from pixart_delta_core.demo.files import write_demo_models
from pixart_delta_core.errors import CheckpointError
from tests.test_damaged_files import WEIGHTS, assert_same, no_hang, read_all

__all__ = ["no_hang"]  # the autouse fixture: a case that blocks fails after 10 s instead of stalling the run


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX feature")
def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="found a FIFO"):
        open_checkpoint(fifo)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero, a character device")
def test_a_device_file_is_refused() -> None:
    with pytest.raises(CheckpointError, match="found a character device"):
        open_checkpoint("/dev/zero")


def test_a_name_over_255_bytes_is_our_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"cannot read|no such file") as err:
        open_checkpoint(tmp_path / ("é" * 200 + ".safetensors"))
    assert "éé" in str(err.value)


@pytest.mark.skipif(sys.platform != "linux", reason="file names are arbitrary bytes on Linux only")
def test_a_file_name_that_is_not_utf8_loads_and_is_printed_escaped(tmp_path: Path, capsys) -> None:
    transformer = write_demo_models(tmp_path).transformer
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9" + transformer.suffix.encode()))
    transformer.rename(odd)
    assert main(["info", str(odd)]) == 0
    out = capsys.readouterr().out
    assert f"caf\\xe9{odd.suffix}" in out.encode("utf-8").decode()  # strict UTF-8: nothing unprintable
    odd.write_bytes(b"\x80")
    assert main(["info", str(odd)]) == 1
    err = capsys.readouterr().err
    assert f"caf\\xe9{odd.suffix}: not a checkpoint" in err.encode("utf-8").decode()


def test_a_missing_path_and_an_unreadable_index_are_our_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file or folder"):
        open_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text('{"weight_map": {"a": "../x"}}')
    with pytest.raises(CheckpointError, match=r"shard '../x' is not a file name"):
        open_checkpoint(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_bytes(b"\xff{")
    with pytest.raises(CheckpointError, match="expected UTF-8 JSON"):
        open_checkpoint(tmp_path)


def test_a_sharded_index_must_match_its_shards(tmp_path: Path) -> None:
    save_file(WEIGHTS, str(tmp_path / "m-1.safetensors"))
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "m-1.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"the shards hold \['b'\], which it does not list"):
        open_checkpoint(tmp_path)
    index.write_text(
        json.dumps({"weight_map": {"a": "m-1.safetensors", "b": "m-1.safetensors", "z": "m-1.safetensors"}})
    )
    with pytest.raises(CheckpointError, match=r"\['z'\] are not in the shards it names"):
        open_checkpoint(tmp_path)
    index.write_text(json.dumps({"weight_map": dict.fromkeys(WEIGHTS, "m-1.safetensors")}))
    assert_same(read_all(tmp_path), WEIGHTS)
