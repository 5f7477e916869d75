"""Reading PyTorch ``.pth``/``.bin`` checkpoints: checked for damage first, then unpickled with
``weights_only=True`` only, so a checkpoint can never run code while it is read.

torch (2.13) reads a damaged file without a word: it checks no zip member's CRC, and a legacy file's
pickle may declare storages of any size, which torch allocates before it reads them. So each file is
checked here before ``torch.load``: a zip archive member by member (stored, not compressed; every CRC
verified), a legacy file by a dry run of its pickles that executes nothing and sizes every storage
against the bytes that follow.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import torch

from ..errors import CheckpointError, first_line
from ..memory import release_pages
from .formats import EXPECTED, CheckpointFormat, sniff_format
from .sources import TensorSource, printable_path, reading, unreadable_tensor
from .torch_pickle import DryRun, check_views, view_names

_CRC_CHUNK = 16 << 20
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy torch.save file
_LEGACY_PROTOCOL = 1001


class TorchFileSource(TensorSource):
    """A PyTorch checkpoint (zip archive, memory-mapped; or legacy pickle, read into memory).

    Raises ``CheckpointError`` for a damaged file (a zip member with a wrong CRC, cut short or compressed,
    or of another size than its storage declares; a legacy file truncated or declaring more data than it
    holds; a tensor view past its storage or repeating elements), for pickled objects other than
    tensors and plain containers, and for a state dict whose keys are not text or whose values are not
    dense tensors.
    """

    def __init__(self, path: Path) -> None:
        name = printable_path(path)
        kind = sniff_format(path)
        if kind is CheckpointFormat.SAFETENSORS:
            raise CheckpointError(f"{name}: expected a PyTorch checkpoint, found a safetensors file")
        # torch.load reads a path named .safetensors as safetensors whatever it holds: such a file (a
        # renamed .pth) goes in as a file object, which torch cannot memory-map.
        self._mapped = kind is CheckpointFormat.TORCH_ZIP and not path.name.endswith(".safetensors")
        with reading(path):
            if kind is CheckpointFormat.TORCH_ZIP:
                check_zip_archive(path)
                with open(path, "rb") as f:
                    state = _torch_load(path if self._mapped else f, name, mmap=self._mapped)
            else:
                data = path.read_bytes()  # legacy files are read whole anyway; in memory, no read overruns it
                check_legacy_pickle(data, name)
                state = _torch_load(io.BytesIO(data), name, mmap=False)
        tensors = _state_dict_tensors(_unwrap_state_dict(state, name), name)
        super().__init__(
            {k: tuple(v.shape) for k, v in tensors.items()},
            {k: v.dtype for k, v in tensors.items()},
            name,
        )
        self.path = path
        self._tensors = tensors

    def _read(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def read_into(self, key: str, out: torch.Tensor) -> None:
        tensor = self._tensors[key]
        out.copy_(tensor)
        if self._mapped:
            release_pages(tensor)

    def mapped(self, key: str) -> torch.Tensor | None:
        tensor = self._tensors[key]  # memory-mapped from the zip archive, or already in memory (legacy files)
        return tensor if tensor.is_contiguous() else None  # a strided view (a transpose) is copied by read_into


def check_zip_archive(path: Path) -> None:
    """Raise ``CheckpointError`` unless every member of the archive is stored whole with its CRC intact (and for
    an archive without a ``data.pkl``: a zip file PyTorch did not write, named as such).

    torch writes members uncompressed; reading each one through ``zipfile`` checks its local header
    against the directory, its length against the file and its CRC-32 against its bytes. Then every
    storage the pickle declares must be a member of exactly its declared size, and every tensor view
    must lie within its storage (``_check_zip_storages``).
    """
    name = printable_path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            names = [m.filename for m in members]
            if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):  # an archive torch did not write
                files = sum(not m.is_dir() for m in members)
                raise CheckpointError(
                    f"{name}: a zip archive of {files} file{'s' * (files != 1)}, not a checkpoint: no PyTorch state "
                    f"dict (data.pkl) in it; {EXPECTED}"
                )
            if len(set(names)) != len(names):
                raise CheckpointError(f"{name}: damaged PyTorch archive: a member name appears twice")
            for member in members:
                if member.compress_type != zipfile.ZIP_STORED or member.flag_bits & 1:
                    raise CheckpointError(
                        f"{name}: member {member.filename!r} is compressed or encrypted (method "
                        f"{member.compress_type}); PyTorch writes members stored, so this is not a file it wrote"
                    )
                if member.compress_size != member.file_size:
                    raise CheckpointError(
                        f"{name}: damaged PyTorch archive: member {member.filename!r} claims {member.file_size} "
                        f"bytes but stores {member.compress_size}"
                    )
                with archive.open(member) as f:
                    while f.read(_CRC_CHUNK):  # zipfile checks the CRC when the member's end is reached
                        pass
            _check_zip_storages(archive, name)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, struct.error, NotImplementedError, OverflowError) as err:
        raise CheckpointError(
            f"{name}: cannot read this PyTorch archive (truncated or corrupted): {first_line(err)}"
        ) from err


def _check_zip_storages(archive: zipfile.ZipFile, name: str) -> None:
    """Raise ``CheckpointError`` unless ``<folder>/data/<key>`` holds exactly the bytes each storage declares.

    torch names the archive's folder after its first member and maps each storage at the size its
    pickle declares, whatever its member holds (its unmapped reader refuses a size mismatch: so do we).
    """
    members = {m.filename: m.file_size for m in archive.infolist()}
    folder = next(iter(members), "").partition("/")[0]
    if not all(n.startswith(folder + "/") for n in members):
        raise CheckpointError(f"{name}: damaged PyTorch archive: expected every member in the folder {folder!r}")
    if f"{folder}/data.pkl" not in members:
        raise CheckpointError(f"{name}: damaged PyTorch archive: no {folder}/data.pkl (the state dict's pickle)")
    dry = DryRun(io.BytesIO(archive.read(f"{folder}/data.pkl")), 5)
    try:
        root = dry.load()
    except Exception as err:  # the dry run runs no code: whatever stops it is damage in the file
        raise CheckpointError(f"{name}: damaged PyTorch archive: its data.pkl: {first_line(err)}") from err
    for key, storage in dry.storages.items():
        member = f"{folder}/data/{key}"
        if members.get(member) != storage.nbytes:
            found = "is missing" if member not in members else f"holds {members[member]} bytes"
            raise CheckpointError(
                f"{name}: damaged PyTorch archive: storage {key!r} is declared with {storage.numel} elements of "
                f"{storage.itemsize} bytes ({storage.nbytes} bytes), but its member {member!r} {found}"
            )
    check_views(dry.views, view_names(root), name)


def check_legacy_pickle(data: bytes, name: str) -> None:
    """Raise ``CheckpointError`` unless ``data`` is a whole legacy torch file whose storages fill it exactly.

    The legacy layout: pickles of the magic number, the protocol version, system info, the object (with
    storages as persistent ids) and the list of storage keys; then each storage as an 8-byte element
    count and its bytes, in that list's order. A dry run (``DryRun``) reads the pickles; every declared
    storage must follow, at its declared size, and nothing after the last; every tensor view must lie
    within its storage and repeat no element (``check_views``).
    """
    stream = io.BytesIO(data)
    try:
        magic = DryRun(stream, 6).load()
        if magic != _LEGACY_MAGIC:
            raise CheckpointError(
                f"{name}: refused to unpickle: a plain pickle of {type(magic).__name__}, not a file torch.save "
                f"wrote; expected a state dict of tensors (a pickle may run code when loaded)"
            )
        protocol, _ = DryRun(stream, 6).load(), DryRun(stream, 6).load()
        dry = DryRun(stream, 6)
        root = dry.load()
        keys = DryRun(stream, 6).load()
    except CheckpointError:
        raise
    except Exception as err:  # the dry run runs no code: whatever stops it is damage in the file
        raise CheckpointError(f"{name}: damaged or truncated PyTorch file: {first_line(err)}") from err
    if protocol != _LEGACY_PROTOCOL:
        raise CheckpointError(f"{name}: damaged PyTorch file: protocol {protocol!r:.40}, expected {_LEGACY_PROTOCOL}")
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(dry.storages):
        raise CheckpointError(f"{name}: damaged PyTorch file: its list of storages does not match the storages it uses")
    position = stream.tell()
    for key in keys:
        numel, itemsize = dry.storages[str(key)].numel, dry.storages[str(key)].itemsize
        if position + 8 + numel * itemsize > len(data):
            raise CheckpointError(
                f"{name}: truncated PyTorch file: storage {str(key)!r} needs {numel * itemsize} bytes at "
                f"{position + 8}, the file has {len(data)} in all"
            )
        stored = int.from_bytes(data[position : position + 8], "little")
        if stored != numel:
            raise CheckpointError(
                f"{name}: damaged PyTorch file: storage {str(key)!r} is declared with {numel} elements, "
                f"its data with {stored}"
            )
        position += 8 + numel * itemsize
    if position != len(data):
        raise CheckpointError(
            f"{name}: damaged PyTorch file: {len(data) - position} bytes after its last storage (expected none)"
        )
    check_views(dry.views, view_names(root), name)


def _torch_load(file: Path | BinaryIO, name: str, mmap: bool) -> object:
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{name}: refused to unpickle: the file holds Python objects other than tensors and "
            f"plain containers, which could run code when loaded ({first_line(err)}). Convert it "
            f"to .safetensors from a trusted environment."
        ) from err
    except Exception as err:  # the file passed its checks; whatever torch still finds wrong is the file's
        raise CheckpointError(
            f"{name}: cannot read this PyTorch checkpoint (truncated or corrupted?): {first_line(err)}"
        ) from err


def _unwrap_state_dict(state: object, name: str) -> Mapping[object, object]:
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
            f"{name}: expected a state dict (a mapping of names to tensors), found {type(state).__name__}"
        )
    return state


def _state_dict_tensors(state: Mapping[object, object], name: str) -> dict[str, torch.Tensor]:
    """The state dict itself, once every key is text and every value a dense tensor."""
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(
                f"{name}: expected a state dict with text keys, found the key {key!r:.60} ({type(key).__name__})"
            )
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{name}: expected a tensor under {key!r}, found {type(value).__name__}")
        why = unreadable_tensor(value)
        if why is not None:
            raise CheckpointError(f"{name}: tensor {key!r} is {why}; it cannot be loaded")
    return dict(state)  # type: ignore[arg-type]  # every key and value checked above
