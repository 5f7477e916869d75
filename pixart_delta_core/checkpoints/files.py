"""Safe, lazy reading of checkpoint files: names and shapes first, one tensor at a time after.

Every format is recognised by its bytes, not its extension. Pickled files are opened with
``weights_only=True`` only, so a checkpoint can never run code while it is read.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import pickle
import struct
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import torch

from ..errors import CheckpointError, first_line
from ..memory import release_pages

log = logging.getLogger(__name__)

Shape = tuple[int, ...]

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class TensorSource(Mapping[str, torch.Tensor]):
    """A read-only mapping from key to tensor whose shapes and dtypes are known before any read.

    ``source[key]`` reads one tensor; ``shapes`` and ``dtypes`` never read tensor data.
    """

    def __init__(
        self,
        shapes: Mapping[str, Shape],
        dtypes: Mapping[str, torch.dtype],
        origin: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.shapes: dict[str, Shape] = dict(shapes)
        self.dtypes: dict[str, torch.dtype] = dict(dtypes)
        self.origin = origin
        self.metadata: dict[str, str] = dict(metadata or {})

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def __contains__(self, key: object) -> bool:
        return key in self.shapes

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.shapes:
            raise KeyError(key)
        return self._read(key)

    def _read(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def read_into(self, key: str, out: torch.Tensor) -> None:
        """Copy tensor ``key`` into ``out`` (same shape, any dtype and device), converting on the way."""
        out.copy_(self[key])

    def mapped(self, key: str) -> torch.Tensor | None:
        """Tensor ``key`` on the CPU without a copy (a view of the memory-mapped file), or None.

        Pages of a mapped file are read on first use and shared with the system's file cache, so a
        model held this way costs no copy while it loads and no more memory than its weights.
        """
        return None

    def nbytes(self) -> int:
        """Size of all tensors as stored."""
        return sum(math.prod(shape) * self.dtypes[key].itemsize for key, shape in self.shapes.items())

    def without_prefix(self, prefix: str) -> TensorSource:
        """The keys that start with ``prefix``, with the prefix removed."""
        return self.renamed_prefix(prefix, "")

    def renamed_prefix(self, prefix: str, replacement: str) -> TensorSource:
        """The keys that start with ``prefix``, with the prefix replaced (the same: a selection)."""
        if not prefix and not replacement:
            return self
        return _PrefixView(self, prefix, replacement)


class StateDictSource(TensorSource):
    """An in-memory state dict (real, empty or meta tensors) seen as a source."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], origin: str = "state dict") -> None:
        tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
        super().__init__(
            {k: tuple(v.shape) for k, v in tensors.items()},
            {k: v.dtype for k, v in tensors.items()},
            origin,
        )
        self._tensors = tensors

    def _read(self, key: str) -> torch.Tensor:
        return self._tensors[key]


class _PrefixView(TensorSource):
    def __init__(self, inner: TensorSource, prefix: str, replacement: str) -> None:
        keys = [k for k in inner.shapes if k.startswith(prefix)]
        super().__init__(
            {replacement + k[len(prefix) :]: inner.shapes[k] for k in keys},
            {replacement + k[len(prefix) :]: inner.dtypes[k] for k in keys},
            inner.origin,
            inner.metadata,
        )
        self._inner = inner
        self._prefix = prefix
        self._replacement = replacement

    def _theirs(self, key: str) -> str:
        return self._prefix + key[len(self._replacement) :]

    def _read(self, key: str) -> torch.Tensor:
        return self._inner[self._theirs(key)]

    def read_into(self, key: str, out: torch.Tensor) -> None:
        self._inner.read_into(self._theirs(key), out)

    def mapped(self, key: str) -> torch.Tensor | None:
        return self._inner.mapped(self._theirs(key))


class SafetensorsSource(TensorSource):
    """One or several ``.safetensors`` files (shards).

    A tensor kept as stored on the CPU is a view of the memory-mapped file (``mapped``); a tensor
    converted or sent to another device is read into its own memory, through a small staging buffer,
    never through a map: the pages of the whole file would stay counted in the process while the
    converted copy is built.
    """

    def __init__(self, paths: list[Path], origin: str) -> None:
        shapes: dict[str, Shape] = {}
        dtypes: dict[str, torch.dtype] = {}
        metadata: dict[str, str] = {}
        self._where: dict[str, tuple[Path, int, int]] = {}
        for path in paths:
            header, data_start = _safetensors_header(path)
            metadata.update(header.pop("__metadata__", None) or {})
            for key, info in header.items():
                dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
                if dtype is None:
                    raise CheckpointError(
                        f"{path}: tensor {key!r} has dtype {info.get('dtype')!r}, which the pack "
                        f"cannot read (expected one of {', '.join(_SAFETENSORS_DTYPES)})"
                    )
                begin, end = info["data_offsets"]
                shapes[key] = tuple(info["shape"])
                dtypes[key] = dtype
                self._where[key] = (path, data_start + begin, end - begin)
        super().__init__(shapes, dtypes, origin, metadata)
        self._staging: torch.Tensor | None = None
        self._maps: dict[Path, mmap.mmap] = {}

    def _read(self, key: str) -> torch.Tensor:
        out = torch.empty(self.shapes[key], dtype=self.dtypes[key])
        self.read_into(key, out)
        return out

    def read_into(self, key: str, out: torch.Tensor) -> None:
        """Read straight into ``out`` when it is a CPU tensor of the stored dtype, else through a
        small staging buffer, chunk by chunk: no temporary copy of the whole tensor."""
        path, offset, nbytes = self._where[key]
        dtype = self.dtypes[key]
        flat = out.view(-1)
        with open(path, "rb") as f:
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
        if nbytes != flat.numel() * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {key!r} holds {nbytes} bytes, not {list(self.shapes[key])} {dtype}")

    def mapped(self, key: str) -> torch.Tensor | None:
        path, offset, nbytes = self._where[key]
        dtype = self.dtypes[key]
        if nbytes == 0 or offset % dtype.itemsize:
            return None  # a view needs the tensor aligned to its element size in the file
        if path not in self._maps:
            with open(path, "rb") as f:  # copy-on-write: the model may change its tensors, never the file
                self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        raw = torch.frombuffer(self._maps[path], dtype=torch.uint8, count=nbytes, offset=offset)
        return raw.view(dtype).reshape(self.shapes[key])

    @staticmethod
    def _fill(f: BinaryIO, buffer: torch.Tensor, key: str, path: Path) -> None:
        want = buffer.numel()
        got = f.readinto(memoryview(buffer.numpy())) if want else 0
        if got != want:
            raise CheckpointError(f"{path}: truncated: tensor {key!r} needs {want} more bytes, read {got}")


_STAGING_BYTES = 8 << 20


class TorchFileSource(TensorSource):
    """A PyTorch pickle checkpoint, unpickled with ``weights_only=True`` and memory-mapped."""

    def __init__(self, path: Path) -> None:
        self._mapped = zipfile.is_zipfile(path)
        state = _torch_load(path, self._mapped)
        sd = _unwrap_state_dict(state, path)
        tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
        super().__init__(
            {k: tuple(v.shape) for k, v in tensors.items()},
            {k: v.dtype for k, v in tensors.items()},
            str(path),
        )
        self._tensors = tensors

    def _read(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def read_into(self, key: str, out: torch.Tensor) -> None:
        tensor = self._tensors[key]
        out.copy_(tensor)
        if self._mapped:
            release_pages(tensor)

    def mapped(self, key: str) -> torch.Tensor | None:
        return self._tensors[key]  # memory-mapped from the zip archive, or already in memory (legacy files)


def open_checkpoint(path: str | Path) -> TensorSource:
    """Open a checkpoint file or a diffusers model folder for lazy reading."""
    path = Path(path)
    if path.is_dir():
        return _open_folder(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    kind = sniff_format(path)
    if kind == "safetensors":
        return SafetensorsSource([path], str(path))
    if kind == "torch":
        return TorchFileSource(path)
    raise CheckpointError(f"{path}: {kind}")


def sniff_format(path: Path) -> str:
    """'safetensors' or 'torch' from the file's first bytes, else a sentence saying what it is."""
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes); expected a .safetensors or .pth checkpoint"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    if head[:4] == b"GGUF":
        return "this is a GGUF file; the pack reads .safetensors and .pth checkpoints"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < header_len <= 100_000_000:
            return "safetensors"
    return (
        f"not a checkpoint: its first bytes ({head[:8].hex()}) are neither a safetensors header "
        f"nor a PyTorch file; expected a .safetensors or .pth checkpoint"
    )


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The parsed header and the offset where tensor data starts; checks the file is complete."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", raw)
        if 8 + header_len > size:
            raise CheckpointError(
                f"{path}: truncated safetensors file: the header says {header_len} bytes of "
                f"header but the file has {size} bytes"
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: corrupted safetensors header ({err})") from err
    end = max((info["data_offsets"][1] for k, info in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file: its tensors need {8 + header_len + end} bytes "
            f"but the file has {size} (an interrupted download or copy?)"
        )
    return header, 8 + header_len


def _torch_load(path: Path, mapped: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to unpickle: the file holds Python objects other than tensors and "
            f"plain containers, which could run code when loaded ({first_line(err)}). Convert it "
            f"to .safetensors from a trusted environment."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(
            f"{path}: cannot read this PyTorch checkpoint (truncated or corrupted?): {first_line(err)}"
        ) from err


def _unwrap_state_dict(state: object, path: Path) -> Mapping[str, object]:
    """The reference saves ``{"state_dict": sd}``; other savers nest under ``model`` or ``module``."""
    for _ in range(3):
        if not isinstance(state, Mapping):
            break
        inner = next((state[k] for k in ("state_dict", "model", "module") if k in state), None)
        if inner is None or not isinstance(inner, Mapping):
            break
        state = inner
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{path}: expected a state dict (a mapping of names to tensors), found {type(state).__name__}"
        )
    return state


_FOLDER_WEIGHTS = ("diffusion_pytorch_model", "model")


def _open_folder(folder: Path) -> TensorSource:
    """A diffusers model folder, or a pipeline folder whose ``transformer/`` holds the model."""
    for candidate in (folder, folder / "transformer"):
        for stem in _FOLDER_WEIGHTS:
            index = candidate / f"{stem}.safetensors.index.json"
            if index.is_file():
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                return SafetensorsSource([candidate / s for s in shards], str(candidate))
            single = candidate / f"{stem}.safetensors"
            if single.is_file():
                return SafetensorsSource([single], str(candidate))
            pickled = candidate / f"{stem}.bin"
            if pickled.is_file():
                return TorchFileSource(pickled)
    raise CheckpointError(
        f"{folder}: a folder, but no model weights in it: expected diffusion_pytorch_model.safetensors "
        f"(or a sharded index) in the folder or in its transformer/ subfolder"
    )


def folder_config(source: TensorSource) -> dict:
    """The diffusers ``config.json`` of a diffusers folder's weights, with the pipeline class if known.

    A lone file is only read with the folder around it when it carries the diffusers file name, so a
    ``config.json`` of some other model in a shared models folder is never taken for its own.
    """
    base = Path(source.origin)
    if base.is_dir():
        folder = base
    elif base.name.startswith("diffusion_pytorch_model"):
        folder = base.parent
    else:
        return {}
    config: dict = {}
    path = folder / "config.json"
    if path.is_file():
        config = json.loads(path.read_text())
    pipeline = folder.parent / "model_index.json"
    if pipeline.is_file():
        config["_pipeline_class"] = json.loads(pipeline.read_text()).get("_class_name")
    return config
