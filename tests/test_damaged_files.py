"""Damaged files and odd paths: each gives the engine's own error naming what was expected and found,
never a raw exception and never changed weights (kinds 1, 2, 3 and 4 of what loading guarantees; odd paths,
kind 7, are test_odd_paths.py)."""

from __future__ import annotations

import json
import signal
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from pixart_delta_core.checkpoints.files import open_checkpoint
from pixart_delta_core.checkpoints.formats import CheckpointFormat, sniff_format
from pixart_delta_core.checkpoints.loading import load_strict
from pixart_delta_core.errors import CheckpointError

WEIGHTS = {"a": torch.arange(4, dtype=torch.float32) + 0.5, "b": torch.full((2, 3), 2.25, dtype=torch.float16)}


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A case that blocks (a FIFO opened for reading) fails after 10 s instead of stalling the run."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def stop(*_: object) -> None:
        raise TimeoutError("the case hung")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def read_all(path: Path) -> dict[str, torch.Tensor]:
    source = open_checkpoint(path)
    return {key: source[key].clone() for key in source}


def assert_same(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key


# --- kind 1: safetensors headers -------------------------------------------------------------------------


def header_of(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def write_safetensors(path: Path, header: dict | bytes, data: bytes) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.fixture
def valid_safetensors(tmp_path: Path) -> Path:
    path = tmp_path / "valid.safetensors"
    save_file(WEIGHTS, str(path), metadata={"format": "pt"})
    return path


def _edit(header: dict, key: str, field: str, value: object) -> dict:
    header[key][field] = value
    return header


def _swap_offsets(header: dict) -> dict:
    header["a"]["data_offsets"], header["b"]["data_offsets"] = header["b"]["data_offsets"], header["a"]["data_offsets"]
    return header


HEADER_DAMAGE = {
    "offsets into another tensor": (lambda h: _edit(h, "b", "data_offsets", [0, 12]), "starts at 0; expected"),
    "overlapping offsets": (lambda h: _edit(h, "b", "data_offsets", [8, 20]), "an overlap"),
    "negative offset": (lambda h: _edit(h, "a", "data_offsets", [-4, 12]), "data_offsets [begin, end]"),
    "offsets past the data": (lambda h: _edit(h, "b", "data_offsets", [40, 52]), "a gap"),
    "data not covered": (lambda h: _edit(_edit(h, "a", "shape", [3]), "a", "data_offsets", [0, 12]), "a gap"),
    "shape x dtype not the bytes": (lambda h: _edit(h, "a", "shape", [5]), "needs 20 bytes"),
    "offsets that swap tensors": (_swap_offsets, "needs 16 bytes"),
    "data_offsets a number": (lambda h: _edit(h, "a", "data_offsets", 16), "found 16"),
    "data_offsets strings": (lambda h: _edit(h, "a", "data_offsets", ["0", "16"]), 'found ["0", "16"]'),
    "data_offsets of three": (lambda h: _edit(h, "a", "data_offsets", [0, 8, 16]), "two integers"),
    "shape missing": (lambda h: {**h, "a": {k: v for k, v in h["a"].items() if k != "shape"}}, "found nothing"),
    "shape of booleans": (lambda h: _edit(h, "a", "shape", [True, 4]), "non-negative integers"),
    "shape negative": (lambda h: _edit(h, "a", "shape", [-4]), "non-negative integers"),
    "dtype a list": (lambda h: _edit(h, "a", "dtype", ["F32"]), 'dtype ["F32"]'),
    "dtype unknown": (lambda h: _edit(h, "a", "dtype", "F31"), 'dtype "F31"'),
    "entry not an object": (lambda h: {**h, "a": [1, 2]}, "expected an object with dtype"),
    "__metadata__ a list": (lambda h: {**h, "__metadata__": ["pt"]}, "__metadata__ to map text to text"),
    "__metadata__ values not text": (lambda h: {**h, "__metadata__": {"n": 1}}, "__metadata__ to map text"),
    "absurd nesting": (lambda h: {**h, "__metadata__": {"x": json.loads("[" * 500 + "]" * 500)}}, "text to text"),
    "a [10^12, 32] tensor": (lambda h: _edit(h, "a", "shape", [10**12, 32]), "needs 128000000000000 bytes"),
    "an empty shape past 64 bits": (lambda h: _edit(h, "a", "shape", [0, 2**64]), "does not fit 64-bit"),
}


@pytest.mark.parametrize("case", HEADER_DAMAGE)
def test_a_damaged_safetensors_header_is_refused_before_any_tensor(
    case: str, valid_safetensors: Path, tmp_path: Path
) -> None:
    edit, expected = HEADER_DAMAGE[case]
    header, data = header_of(valid_safetensors)
    path = write_safetensors(tmp_path / "bad.safetensors", edit(header), data)
    with pytest.raises(CheckpointError, match="corrupted") as err:
        read_all(path)
    assert expected in str(err.value) and "bad.safetensors" in str(err.value)
    with pytest.raises(SafetensorError, match="deserializing header"):
        safe_open(str(path), "pt")  # the safetensors library refuses it too


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}',
         "key 'a' appears twice"),
        (b'{"a\xff":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', "not a UTF-8 JSON object"),
        (b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}', "not a UTF-8 JSON object"),
        (b'{"__metadata__":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not a UTF-8 JSON object"),
        (b'{"a\\ud800":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', "not valid Unicode"),
    ],
    ids=["duplicate key", "not UTF-8", "not JSON", "nesting past the parser", "lone surrogate"],
)  # fmt: skip
def test_a_header_that_is_not_a_clean_json_object_is_refused(raw: bytes, expected: str, tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "bad.safetensors", raw, bytes(16))
    with pytest.raises(CheckpointError, match="corrupted") as err:
        open_checkpoint(path)
    assert expected in str(err.value)


def test_a_header_claiming_more_bytes_than_the_file_is_refused_by_size(valid_safetensors: Path) -> None:
    raw = bytearray(valid_safetensors.read_bytes())
    raw[:8] = struct.pack("<Q", 10**15)
    valid_safetensors.write_bytes(raw)
    with pytest.raises(CheckpointError, match=f"claiming {10**15} bytes, in a file of {len(raw)}"):
        open_checkpoint(valid_safetensors)


def test_a_valid_file_reads_exactly_what_the_safetensors_library_reads(valid_safetensors: Path) -> None:
    with safe_open(str(valid_safetensors), "pt") as f:
        theirs = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
    assert_same(read_all(valid_safetensors), theirs)
    assert open_checkpoint(valid_safetensors).metadata == {"format": "pt"}


def test_null_metadata_and_f8_e8m0_read_as_the_safetensors_library_reads_them(tmp_path: Path) -> None:
    header = {"__metadata__": None, "s": {"dtype": "F8_E8M0", "shape": [2, 2], "data_offsets": [0, 4]}}
    path = write_safetensors(tmp_path / "scales.safetensors", header, bytes([120, 127, 130, 255]))
    with safe_open(str(path), "pt") as f:
        theirs = f.get_tensor("s")
    ours = open_checkpoint(path)
    assert ours.metadata == {} and ours["s"].dtype == theirs.dtype == torch.float8_e8m0fnu
    assert torch.equal(ours["s"].view(torch.uint8), theirs.view(torch.uint8))


def test_a_safetensors_dtype_the_pack_does_not_read_is_named_as_such(tmp_path: Path) -> None:
    path = write_safetensors(
        tmp_path / "f4.safetensors", {"a": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}}, b"ab"
    )
    with pytest.raises(CheckpointError, match="stored as F4, a safetensors dtype the pack does not read"):
        open_checkpoint(path)


# --- kind 2: sniffing by structure ----------------------------------------------------------------------


def test_a_safetensors_header_whose_length_starts_with_0x80_is_not_taken_for_a_pickle(
    valid_safetensors: Path, tmp_path: Path
) -> None:
    header, data = header_of(valid_safetensors)
    raw = json.dumps(header).encode()
    raw += b" " * (0x180 - len(raw))  # the format allows trailing spaces: length 0x180, first byte 0x80
    path = write_safetensors(tmp_path / "x.safetensors", raw, data)
    assert path.read_bytes()[0] == 0x80
    assert sniff_format(path) is CheckpointFormat.SAFETENSORS
    assert_same(read_all(path), WEIGHTS)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_pth_renamed_safetensors_loads_as_the_pth_it_is(legacy: bool, tmp_path: Path) -> None:
    path = tmp_path / "renamed.safetensors"
    torch.save(WEIGHTS, path, _use_new_zipfile_serialization=not legacy)
    expected = CheckpointFormat.TORCH_LEGACY if legacy else CheckpointFormat.TORCH_ZIP
    assert sniff_format(path) is expected
    assert_same(read_all(path), WEIGHTS)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "the file is empty"),
        (b"\x80", "its first bytes are 80"),
        (b"GGUF\x03\x00\x00\x00" + bytes(16), "GGUF"),
        (b"<!DOCTYPE html><html>", "perhaps a web page"),
        (b"version https://git-lfs.github.com/spec/v1\n", "Git LFS pointer"),
        (b"PK\x05\x06" + bytes(18), "empty or split zip"),
        (bytes(range(32)), "its first bytes are 00 01 02"),
    ],
    ids=["empty", "one byte", "gguf", "html", "lfs pointer", "empty zip", "noise"],
)
def test_what_is_no_checkpoint_is_named(content: bytes, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a checkpoint") as err:
        open_checkpoint(path)
    assert expected in str(err.value)


# --- kind 3: damaged PyTorch files ------------------------------------------------------------------------


@pytest.fixture
def zip_pth(tmp_path: Path) -> Path:
    path = tmp_path / "model.pth"
    torch.save(WEIGHTS, path)
    return path


def test_a_zip_member_whose_crc_no_longer_matches_is_refused(zip_pth: Path) -> None:
    raw = bytearray(zip_pth.read_bytes())
    at = raw.find(WEIGHTS["a"].numpy().tobytes())
    raw[at + 5] ^= 0x40
    zip_pth.write_bytes(raw)
    changed = torch.load(zip_pth, weights_only=True)["a"]  # torch itself loads the changed weight unwarned
    assert not torch.equal(changed, WEIGHTS["a"])
    with pytest.raises(CheckpointError, match="Bad CRC-32"):
        open_checkpoint(zip_pth)


def _central_entry(raw: bytes, member: str) -> int:
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        (name_len,) = struct.unpack("<H", raw[at + 28 : at + 30])
        if raw[at + 46 : at + 46 + name_len].decode() == member:
            return at
        at = raw.find(b"PK\x01\x02", at + 4)
    raise AssertionError(member)


def test_a_zip_member_cut_short_is_refused(zip_pth: Path) -> None:
    member = next(n for n in zipfile.ZipFile(zip_pth).namelist() if n.endswith("data/0"))
    raw = bytearray(zip_pth.read_bytes())
    entry = _central_entry(raw, member)
    raw[entry + 20 : entry + 28] = struct.pack("<II", 8, 8)  # compressed and uncompressed size: half the tensor
    zip_pth.write_bytes(raw)
    with pytest.raises(CheckpointError, match=r"Bad CRC-32|truncated or corrupted"):
        open_checkpoint(zip_pth)


def test_a_truncated_zip_archive_is_refused(zip_pth: Path) -> None:
    zip_pth.write_bytes(zip_pth.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        open_checkpoint(zip_pth)


def test_a_compressed_member_is_refused(zip_pth: Path, tmp_path: Path) -> None:
    deflated = tmp_path / "deflated.pth"
    with zipfile.ZipFile(zip_pth) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(CheckpointError, match=r"compressed or encrypted .method 8"):
        open_checkpoint(deflated)


@pytest.fixture
def legacy_pth(tmp_path: Path) -> Path:
    path = tmp_path / "legacy.pth"
    torch.save(WEIGHTS, path, _use_new_zipfile_serialization=False)
    return path


@pytest.mark.parametrize("cut", [1, 3, 40, 0.5])
def test_a_truncated_legacy_file_is_refused(cut: float, legacy_pth: Path) -> None:
    raw = legacy_pth.read_bytes()
    legacy_pth.write_bytes(raw[: int(len(raw) * cut)] if cut < 1 else raw[:-cut])
    with pytest.raises(CheckpointError, match=r"truncated|damaged|not a checkpoint"):
        open_checkpoint(legacy_pth)


def test_a_legacy_storage_declared_far_larger_than_the_file_is_refused_before_allocating(legacy_pth: Path) -> None:
    raw = legacy_pth.read_bytes()
    at = raw.find(b"cpu", raw.find(b"FloatStorage")) + 5  # after the location and its memo put: a's element count
    assert raw[at : at + 2] == b"K\x04"  # BININT1 4
    legacy_pth.write_bytes(raw[:at] + b"\x8a\x06" + (10**13).to_bytes(6, "little") + raw[at + 2 :])
    with pytest.raises(CheckpointError, match=r"needs 40000000000000 bytes"):
        open_checkpoint(legacy_pth)


def test_bytes_after_the_last_legacy_storage_are_refused(legacy_pth: Path) -> None:
    legacy_pth.write_bytes(legacy_pth.read_bytes() + b"\x00")
    with pytest.raises(CheckpointError, match="1 bytes after its last storage"):
        open_checkpoint(legacy_pth)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({1: torch.zeros(2)}, "text keys, found the key 1 (int)"),
        ({("a",): torch.zeros(2)}, "found the key ('a',) (tuple)"),
        ({"a": {"b": [1, 2]}}, "expected a tensor under 'a', found dict"),
        ({"a": [torch.zeros(2)]}, "found list"),
        ({"a": torch.zeros(2), "step": 3}, "expected a tensor under 'step', found int"),
        ({"a": torch.zeros(2, device="meta")}, "a meta tensor"),
        ({"a": torch.eye(2).to_sparse()}, "sparse_coo tensor"),
        ([torch.zeros(2)], "expected a state dict (a mapping of names to tensors), found list"),
    ],
    ids=["int key", "tuple key", "nested garbage", "list of tensors", "number", "meta", "sparse", "not a dict"],
)
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_pth_that_is_no_state_dict_of_dense_tensors_is_refused(
    state: object, expected: str, legacy: bool, tmp_path: Path
) -> None:
    path = tmp_path / "odd.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(path)
    assert expected in str(err.value)


# --- kind 4: non-float weights ----------------------------------------------------------------------------


def meta_model() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(2, 2))


@pytest.mark.parametrize(
    "dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64], ids=lambda d: str(d)[6:]
)
def test_a_non_float_weight_is_refused_at_load_with_its_key_and_dtype(dtype: torch.dtype, tmp_path: Path) -> None:
    weights = {"0.weight": torch.ones(2, 2).to(dtype), "0.bias": torch.zeros(2)}
    path = tmp_path / "w.pth"
    torch.save(weights, path)
    model = meta_model()
    with pytest.raises(CheckpointError, match=f"floating-point weights .*found 0.weight: {str(dtype)[6:]}$"):
        load_strict(model, open_checkpoint(path), torch.float32, torch.device("cpu"))
    assert model[0].weight.is_meta, "nothing was loaded"


def test_a_dtype_tag_flipped_from_f32_to_i32_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"0.weight": torch.ones(2, 2), "0.bias": torch.zeros(2)}, str(path))
    header, data = header_of(path)
    header["0.weight"]["dtype"] = "I32"
    write_safetensors(path, header, data)
    with pytest.raises(CheckpointError, match=r"found 0.weight: int32"):
        load_strict(meta_model(), open_checkpoint(path), torch.float32, torch.device("cpu"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float64])
def test_every_floating_dtype_loads_converted(dtype: torch.dtype, tmp_path: Path) -> None:
    weights = {"0.weight": torch.tensor([[1.0, -2.0], [0.5, 4.0]]).to(dtype), "0.bias": torch.zeros(2, dtype=dtype)}
    path = tmp_path / "w.safetensors"
    save_file(weights, str(path))
    model = meta_model()
    load_strict(model, open_checkpoint(path), torch.float32, torch.device("cpu"))
    assert torch.equal(model[0].weight, weights["0.weight"].float())


def test_a_meta_tensor_in_memory_is_refused_when_read() -> None:
    weights = {"0.weight": torch.empty(2, 2, device="meta"), "0.bias": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"'0.weight' is a meta tensor"):
        load_strict(meta_model(), weights_source(weights), torch.float32, torch.device("cpu"))


def weights_source(weights: dict[str, torch.Tensor]):
    from pixart_delta_core.checkpoints.loading import as_source

    return as_source(weights)
