"""The ``TensorSource`` mapping every reader returns, and the in-memory and prefixed views of one.

A source knows each tensor's shape and dtype before any read; reading is one tensor at a time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import CheckpointError

Shape = tuple[int, ...]


def printable_path(path: str | os.PathLike[str] | os.PathLike[bytes] | bytes) -> str:
    """``path`` as text that can always be printed: undecodable bytes and control characters escaped.

    A file name on Linux is bytes; one that is not UTF-8 arrives as a str with lone surrogates, which
    ``print`` cannot encode. Messages quote paths through this.
    """
    text = os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class TensorSource(Mapping[str, torch.Tensor]):
    """A read-only mapping from key to tensor whose shapes and dtypes are known before any read.

    ``source[key]`` reads one tensor; ``shapes`` and ``dtypes`` never read tensor data. ``origin`` names
    the source in messages (always printable); ``path`` is the file or folder it was read from, if any.
    """

    path: Path | None = None

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


def unreadable_tensor(tensor: torch.Tensor) -> str | None:
    """Why ``tensor`` holds no dense data to load (meta, sparse, quantized...), or None when it does."""
    if tensor.is_meta:
        return "a meta tensor (a shape without data)"
    if tensor.layout != torch.strided:
        return f"a {str(tensor.layout).removeprefix('torch.')} tensor (expected a dense one)"
    if tensor.is_quantized or tensor.is_nested:
        return "a quantized or nested tensor (expected a plain dense one)"
    return None


class StateDictSource(TensorSource):
    """An in-memory state dict (real, empty or meta tensors) seen as a source.

    Meta tensors serve detection and loading onto the meta device (shapes only); reading one into real
    memory raises ``CheckpointError``, as does reading a sparse or quantized one.
    """

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

    def read_into(self, key: str, out: torch.Tensor) -> None:
        why = None if out.is_meta else unreadable_tensor(self._tensors[key])
        if why is not None:
            raise CheckpointError(f"{self.origin}: tensor {key!r} is {why}; it cannot be loaded")
        out.copy_(self._tensors[key])


class _PrefixView(TensorSource):
    def __init__(self, inner: TensorSource, prefix: str, replacement: str) -> None:
        keys = [k for k in inner.shapes if k.startswith(prefix)]
        super().__init__(
            {replacement + k[len(prefix) :]: inner.shapes[k] for k in keys},
            {replacement + k[len(prefix) :]: inner.dtypes[k] for k in keys},
            inner.origin,
            inner.metadata,
        )
        self.path = inner.path
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


class JoinedSource(TensorSource):
    """Several sources seen as one, each under its own key prefix (two files that together hold one model)."""

    def __init__(self, parts: Mapping[str, TensorSource], origin: str) -> None:
        self._where = {prefix + key: (inner, key) for prefix, inner in parts.items() for key in inner.shapes}
        super().__init__(
            {name: inner.shapes[key] for name, (inner, key) in self._where.items()},
            {name: inner.dtypes[key] for name, (inner, key) in self._where.items()},
            origin,
        )

    def _read(self, key: str) -> torch.Tensor:
        inner, theirs = self._where[key]
        return inner[theirs]

    def read_into(self, key: str, out: torch.Tensor) -> None:
        inner, theirs = self._where[key]
        inner.read_into(theirs, out)

    def mapped(self, key: str) -> torch.Tensor | None:
        inner, theirs = self._where[key]
        return inner.mapped(theirs)


@contextmanager
def reading(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn any ``OSError`` raised inside into a ``CheckpointError`` naming ``path`` and the system's reason."""
    try:
        yield
    except OSError as err:
        raise CheckpointError(f"{printable_path(path)}: cannot read: {err.strerror or err}") from err
