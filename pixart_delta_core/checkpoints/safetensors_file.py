"""Reading ``.safetensors`` files: the header checked against every rule of the format, then lazy reads.

Why our own reader rather than ``safetensors.safe_open``: loading streams each tensor into its target
dtype and device through a small staging buffer, or hands out a view of the memory-mapped file, and
neither needs a whole-tensor copy (``safe_open.get_tensor`` makes one). The header is small, so it is
parsed here and checked against all the format's rules before any tensor is made. The library (0.8)
refuses the same files, except one it lets through and we refuse: a key given twice with the same
entry; it also accepts a header starting with whitespace, which the format says must start with ``{``.
``__metadata__: null`` is read as no metadata, as the library reads it. tests/test_fuzz_loading.py
compares both readers on damaged files.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import torch

from ..errors import CheckpointError
from .formats import MAX_HEADER_BYTES, check_regular_file
from .sources import Shape, TensorSource, printable_path, reading

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E8M0": torch.float8_e8m0fnu,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

LIBRARY_ONLY_DTYPES = ("F4", "F6_E2M3", "F6_E3M2", "U16", "U32", "U64", "C64")
"""Dtypes the safetensors library (0.8) knows that the pack does not read (sub-byte floats, unsigned, complex)."""

_STAGING_BYTES = 8 << 20
_INT64_LIMIT = 2**63  # torch counts elements (and each dimension's stride) in signed 64-bit integers


class SafetensorsSource(TensorSource):
    """One or several ``.safetensors`` files (shards), each header checked in full when opened.

    Raises ``CheckpointError`` naming the file, the rule broken and what was found. A tensor kept as
    stored on the CPU is a view of the memory-mapped file (``mapped``); a tensor converted or sent to
    another device is read into its own memory, through a small staging buffer, never through a map:
    the pages of the whole file would stay counted in the process while the converted copy is built.
    """

    def __init__(self, paths: Sequence[Path], origin: str) -> None:
        shapes: dict[str, Shape] = {}
        dtypes: dict[str, torch.dtype] = {}
        metadata: dict[str, str] = {}
        self._where: dict[str, tuple[Path, int, int]] = {}
        for path in paths:
            header, file_metadata, data_start = read_header(path)
            metadata.update(file_metadata)
            for key, (dtype, shape, begin, end) in header.items():
                if key in self._where:
                    raise CheckpointError(
                        f"{printable_path(path)}: tensor {key!r} is also in "
                        f"{printable_path(self._where[key][0])}; expected each tensor in one shard only"
                    )
                shapes[key] = shape
                dtypes[key] = dtype
                self._where[key] = (path, data_start + begin, end - begin)
        super().__init__(shapes, dtypes, origin, metadata)
        self._staging: torch.Tensor | None = None
        self._maps: dict[Path, mmap.mmap] = {}

    def file_of(self, key: str) -> Path:
        """The shard that holds tensor ``key``."""
        return self._where[key][0]

    def _read(self, key: str) -> torch.Tensor:
        out = torch.empty(self.shapes[key], dtype=self.dtypes[key])
        self.read_into(key, out)
        return out

    def read_into(self, key: str, out: torch.Tensor) -> None:
        """Read straight into ``out`` when it is a CPU tensor of the stored dtype, else through a
        small staging buffer, chunk by chunk: no temporary copy of the whole tensor."""
        path, offset, _ = self._where[key]
        dtype = self.dtypes[key]
        flat = out.view(-1)
        with reading(path), open(path, "rb") as f:
            f.seek(offset)
            if out.device.type == "cpu" and out.dtype == dtype:
                self._fill(f, flat.view(torch.uint8), key, path)
                return
            step = _STAGING_BYTES // dtype.itemsize
            if self._staging is None:  # one buffer for the whole file: no allocation churn per tensor
                self._staging = torch.empty(_STAGING_BYTES, dtype=torch.uint8)
            staging = self._staging
            for start in range(0, flat.numel(), step):
                count = min(step, flat.numel() - start)
                chunk = staging[: count * dtype.itemsize]
                self._fill(f, chunk, key, path)
                flat[start : start + count].copy_(chunk.view(dtype))

    def mapped(self, key: str) -> torch.Tensor | None:
        path, offset, nbytes = self._where[key]
        dtype = self.dtypes[key]
        if nbytes == 0 or offset % dtype.itemsize:
            return None  # a view needs the tensor aligned to its element size in the file
        if path not in self._maps:
            # copy-on-write: the model may change its tensors, never the file
            with reading(path), open(path, "rb") as f:
                self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        if len(self._maps[path]) < offset + nbytes:
            raise CheckpointError(f"{printable_path(path)}: the file became shorter while it was read")
        raw = torch.frombuffer(self._maps[path], dtype=torch.uint8, count=nbytes, offset=offset)
        return raw.view(dtype).reshape(self.shapes[key])

    @staticmethod
    def _fill(f: BinaryIO, buffer: torch.Tensor, key: str, path: Path) -> None:
        want = buffer.numel()
        got = f.readinto(memoryview(buffer.numpy())) if want else 0
        if got != want:
            raise CheckpointError(
                f"{printable_path(path)}: truncated: tensor {key!r} needs {want} more bytes, read {got}"
            )


Entry = tuple[torch.dtype, Shape, int, int]
"""A checked header entry: dtype, shape, and the [begin, end) of its bytes in the data section."""


def read_header(path: Path) -> tuple[dict[str, Entry], dict[str, str], int]:
    """The checked entries, the ``__metadata__`` and where the data section starts in the file.

    Raises ``CheckpointError`` unless the file follows every rule of the format: an 8-byte little-endian
    header length within the file and at most ``MAX_HEADER_BYTES``; a UTF-8 JSON object starting with
    ``{`` and no key given twice; ``__metadata__`` (optional, null for none) mapping text to text; each
    other entry a known ``dtype``, a ``shape`` of non-negative integers (under 2**63 elements) and
    ``data_offsets`` [begin, end] holding exactly shape x dtype bytes; the tensors' bytes side by side,
    with no overlap or gap, filling the data section to the end of the file. Nothing is allocated from a
    size the file claims before it is checked against the file's size.
    """
    name = printable_path(path)
    check_regular_file(path)
    with reading(path), open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        if size < 10:
            raise CheckpointError(f"{name}: truncated safetensors file: {size} bytes, too short for a header")
        (header_len,) = struct.unpack("<Q", f.read(8))
        if not 2 <= header_len <= min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{name}: corrupted or truncated safetensors file: the header claims {header_len} bytes but "
                f"the file has {size} in all (expected 2..{min(MAX_HEADER_BYTES, size - 8)})"
            )
        raw = f.read(header_len)
    data_size = size - 8 - header_len
    if raw[:1] != b"{":
        raise CheckpointError(f"{name}: corrupted safetensors header: expected '{{' first, found {raw[:1]!r}")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _DuplicateKey as err:
        raise CheckpointError(f"{name}: corrupted safetensors header: expected each key once, but {err}") from err
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{name}: corrupted safetensors header: not a UTF-8 JSON object ({err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{name}: corrupted safetensors header: expected an object, found {_brief(header)}")
    declared = header.pop("__metadata__", None)
    metadata = {} if declared is None else _metadata(declared, name)  # null: no metadata, as the library reads it
    entries = {key: _entry(key, info, name) for key, info in header.items()}
    _check_layout(entries, data_size, name)
    return entries, metadata, 8 + header_len


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"key {key!r} appears twice")
        if not _is_text(key):
            raise ValueError(f"key {key!r} is not valid Unicode")
        out[key] = value
    return out


def _is_text(value: object) -> bool:
    """A str that is valid Unicode (JSON's escapes can spell lone surrogates, which UTF-8 cannot hold)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _metadata(value: object, name: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(_is_text(v) for v in value.values()):
        raise CheckpointError(
            f"{name}: corrupted safetensors header: expected __metadata__ to map text to text, found {_brief(value)}"
        )
    return value


def _entry(key: str, info: object, name: str) -> Entry:
    where = f"{name}: corrupted safetensors header: tensor {key!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: expected an object with dtype, shape and data_offsets, found {_brief(info)}")
    dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype_name in LIBRARY_ONLY_DTYPES:
        raise CheckpointError(
            f"{name}: tensor {key!r} is stored as {dtype_name}, a safetensors dtype the pack does not read "
            f"(expected one of {', '.join(SAFETENSORS_DTYPES)})"
        )
    if not isinstance(dtype_name, str) or dtype_name not in SAFETENSORS_DTYPES:
        raise CheckpointError(
            f"{where}: dtype {_brief(dtype_name)} is not one the pack reads (expected one of "
            f"{', '.join(SAFETENSORS_DTYPES)})"
        )
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise CheckpointError(f"{where}: expected a shape of non-negative integers, found {_brief(shape)}")
    if math.prod(max(n, 1) for n in shape) >= _INT64_LIMIT:  # an empty tensor's strides still count the others
        raise CheckpointError(f"{where}: shape {_brief(shape)} does not fit 64-bit element counts (expected < 2**63)")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets):
        raise CheckpointError(f"{where}: expected data_offsets [begin, end] of two integers, found {_brief(offsets)}")
    begin, end = offsets
    dtype = SAFETENSORS_DTYPES[dtype_name]
    nbytes = math.prod(shape) * dtype.itemsize
    if end - begin != nbytes:
        raise CheckpointError(
            f"{where}: shape {shape} in {dtype_name} needs {nbytes} bytes, but data_offsets {offsets} "
            f"hold {end - begin}"
        )
    return dtype, tuple(shape), begin, end


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0  # bool is an int subclass: refused by the exact type


def _check_layout(entries: dict[str, Entry], data_size: int, name: str) -> None:
    """The tensors' bytes lie side by side from 0, without overlap or gap, and end with the file."""
    position, previous = 0, None
    for key, (_, _, begin, end) in sorted(entries.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin != position:
            after = f"tensor {previous!r} ends" if previous else "the data starts"
            raise CheckpointError(
                f"{name}: corrupted safetensors header: tensor {key!r} starts at {begin}; expected {position}, "
                f"where {after} ({'an overlap' if begin < position else 'a gap'}: tensors lie side by side)"
            )
        position, previous = end, key
    if position != data_size:
        raise CheckpointError(
            f"{name}: corrupted or truncated safetensors file: its tensors need {position} bytes of data "
            f"but the file holds {data_size} after the header"
        )


def _brief(value: object) -> str:
    """A short quote of a JSON value for a message."""
    try:
        text = json.dumps(value) if value is not None else "nothing"
    except RecursionError:
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."
