"""``info`` on a file that is no checkpoint says plainly what it is, when it is a well-known kind (a picture, an
archive, a config), and its first bytes otherwise."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from pixart_delta_core.cli import main

EXPECTED = "; expected a .safetensors file (an 8-byte header length, then a JSON header) or a PyTorch .pth/.bin file"


def picture(image_format: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(out, image_format)
    return out.getvalue()


def plain_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:  # stored, as PyTorch writes, but no data.pkl in it
        archive.writestr("notes/readme.txt", "hello")
        archive.writestr("notes/more.txt", "again")
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        ("x.png", picture("PNG"), "a PNG picture, not a checkpoint"),
        ("x.jpg", picture("JPEG"), "a JPEG picture, not a checkpoint"),
        ("x.gif", picture("GIF"), "a GIF picture, not a checkpoint"),
        ("x.webp", picture("WEBP"), "a WebP picture, not a checkpoint"),
        ("x.tiff", picture("TIFF"), "a TIFF picture, not a checkpoint"),
        ("model.safetensors", picture("PNG"), "a PNG picture, not a checkpoint"),  # the bytes decide, not the name
        ("doc.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "a PDF document, not a checkpoint"),
        ("model.safetensors.gz", gzip.compress(b"x" * 64), "a gzip-compressed file, not a checkpoint (decompress"),
        ("model.xz", b"\xfd7zXZ\x00" + bytes(26), "an xz-compressed file, not a checkpoint (decompress"),
        ("model.7z", b"7z\xbc\xaf\x27\x1c" + bytes(26), "a 7-Zip archive, not a checkpoint (extract"),
        ("config.json", json.dumps({"depth": 28}).encode(), "JSON text ('{\"depth\": 28}'...), perhaps a config, not"),
        ("list.json", b"  [1, 2, 3]\n", "JSON text ('  [1, 2, 3]\\n'...), perhaps a config, not a checkpoint"),
    ],
    ids=["png", "jpeg", "gif", "webp", "tiff", "png-named-safetensors", "pdf", "gzip", "xz", "7z", "json", "json-list"],
)
def test_a_well_known_file_that_is_no_checkpoint_is_named(
    tmp_path: Path, capsys, name: str, content: bytes, said: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: {said}"), err
    assert EXPECTED in err and err.count("\n") == 1


def test_a_zip_archive_holding_no_state_dict_is_named(tmp_path: Path, capsys) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(plain_zip())
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    said = "a zip archive of 2 files, not a checkpoint: no PyTorch state dict (data.pkl) in it"
    assert err.startswith(f"error: {path}: {said}")
    assert EXPECTED in err


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09", "not a checkpoint: its first bytes are 00 01 02 03"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "not a checkpoint: its first bytes are 52 49 46 46"),  # RIFF, not WebP
        (b"<!DOCTYPE html><html>", "not a checkpoint: text ('<!DOCTYPE html><'...), perhaps a web page"),
    ],
    ids=["noise", "wave", "html"],
)
def test_other_files_are_told_by_their_first_bytes(tmp_path: Path, capsys, content: bytes, said: str) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    assert main(["info", str(path)]) == 1
    assert capsys.readouterr().err.startswith(f"error: {path}: {said}")


def test_a_lora_is_told_with_its_rank_and_the_layers_it_adapts(tmp_path: Path, capsys) -> None:
    import torch
    from safetensors.torch import save_file

    def pair(module: str, rank: int, width: int = 48) -> dict[str, torch.Tensor]:  # PEFT names, diffusers modules
        down, up = torch.zeros(rank, width), torch.zeros(width, rank)
        return {f"{module}.lora_A.weight": down, f"{module}.lora_B.weight": up}

    state: dict[str, torch.Tensor] = {}
    for block in (0, 1, 2, 5):
        for layer in ("attn1.to_q", "attn1.to_k", "attn1.to_out.0"):  # q and k of the fused qkv, not v
            state |= pair(f"transformer.transformer_blocks.{block}.{layer}", 4)
    state |= pair("transformer.transformer_blocks.7.attn2.to_q", 8)
    save_file(state, str(tmp_path / "style.safetensors"))
    assert main(["info", str(tmp_path / "style.safetensors")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (
        "  PixArt LoRA, LoRA in the PEFT/diffusers (transformer.*) layout on 9 modules, rank 4 to 8: attn.proj, "
        "attn.qkv (2 of 3 parts) of blocks 0-2, 5; cross_attn.q_linear of block 7"
    )
    assert lines[2].startswith(f"  {len(state)} tensors, ")
    save_file(pair("transformer.transformer_blocks.7.attn2.to_q", 8), str(tmp_path / "one.safetensors"))
    assert main(["info", str(tmp_path / "one.safetensors")]) == 0
    assert "layout on 1 module, rank 8: cross_attn.q_linear of block 7" in capsys.readouterr().out
