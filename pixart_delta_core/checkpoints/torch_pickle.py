"""A dry run of the pickles in PyTorch checkpoints: the storages and tensor views a file declares, read
without making any object it names, so that they are checked against the file's bytes before ``torch.load``.

torch (2.13) trusts what the pickle declares: a legacy file's storage is allocated at its declared size;
a tensor view larger than its storage grows the storage to fit (gigabytes from a few pickled bytes); a zip
archive's storage is mapped at its declared size whatever its member holds, so a short member reads the
bytes after it as weights; a view that repeats elements (stride 0, as ``expand`` makes) claims any shape
over one element. ``check_views`` holds every view to its storage's bytes and refuses repeated elements.
"""

from __future__ import annotations

import io
import math
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import CheckpointError

_INT64_LIMIT = 2**63


class _Stub:
    """What the dry run builds for every other global: accepts any arguments and any of the pickle's
    container operations, holds nothing, runs nothing. A file of other objects gets through the dry run
    (its sizes are all checked) to be refused by ``torch.load(weights_only=True)`` with its own message."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _Stub:
        return _Stub()

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, item: object) -> None:
        pass

    def extend(self, items: object) -> None:
        pass


class _OrderedDict(dict):
    """What the dry run builds for an ``OrderedDict`` (a module's state dict): a dict that ignores its state."""

    def __setstate__(self, state: object) -> None:  # a state dict's ``_metadata`` (module versions)
        pass


@dataclass(frozen=True)
class _StorageType:
    itemsize: int


@dataclass(frozen=True)
class StorageRef:
    """A storage as the pickle declares it: its key, element count and element size in bytes."""

    key: str
    numel: int
    itemsize: int

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass(frozen=True, eq=False)
class TensorView:
    """A tensor as the pickle declares it: offset, size and stride count elements of ``itemsize`` bytes."""

    storage: StorageRef
    offset: object
    size: object
    stride: object
    itemsize: int


class DryRun(pickle._Unpickler):
    """Unpickles the structure of a PyTorch checkpoint pickle without making any object it names.

    Globals become ``_Stub`` (nothing is imported or called), except the few whose arguments say what
    the file holds: storage types (element sizes), dtypes, ``OrderedDict`` (a dict) and torch's
    tensor rebuild functions, which record a ``TensorView``. A storage's persistent id records its
    declared size; ``fields`` is its length (6 in legacy files, 5 in zip archives). Built on the
    pure-Python unpickler: it reads a damaged length field as a short read of what is there, where the
    C one first allocates a buffer of the size the field claims (gigabytes).
    """

    def _refuse_bytearray8(self) -> None:  # the one opcode that allocates what its length claims before reading
        raise pickle.UnpicklingError("a protocol-5 bytearray, which torch.save never writes")

    dispatch: ClassVar[dict] = {**pickle._Unpickler.dispatch, pickle.BYTEARRAY8[0]: _refuse_bytearray8}

    def __init__(self, file: io.BytesIO, fields: int) -> None:
        super().__init__(file)
        self.fields = fields
        self.storages: dict[str, StorageRef] = {}
        self.views: list[TensorView] = []

    def find_class(self, module: str, name: str) -> object:
        if module == "collections" and name == "OrderedDict":
            return _OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor_v3"):
            return self._rebuild_v2 if name.endswith("v2") else self._rebuild_v3
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return lambda data, *_: data
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return lambda func, _type, args, _state: func(*args) if callable(func) else _Stub()
        if module == "torch._utils" and name == "_rebuild_qtensor":  # torch allocates its claimed shape first
            raise pickle.UnpicklingError("a quantized tensor (expected a plain dense one)")
        if module == "torch":
            with warnings.catch_warnings():  # the typed storage classes are deprecated, their dtypes are not
                warnings.simplefilter("ignore")
                found = getattr(torch, name, None)
                dtype = getattr(found, "dtype", None) if name.endswith("Storage") else None
            if isinstance(found, torch.dtype):
                return found
            if name == "UntypedStorage":
                return _StorageType(1)
            if isinstance(dtype, torch.dtype):
                return _StorageType(dtype.itemsize)
        return _Stub

    def persistent_load(self, pid: object) -> object:
        if not (isinstance(pid, tuple) and len(pid) == self.fields and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(storage_type, _StorageType) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError(f"storage {key!r:.40} declared with size {numel!r:.40}")
        if self.fields == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("a storage view as torch before 0.4 wrote them; re-save it with torch 2")
        ref = StorageRef(key, numel, storage_type.itemsize)
        if self.storages.setdefault(key, ref) != ref:
            raise pickle.UnpicklingError(f"storage {key!r:.40} declared twice with different sizes")
        return ref

    def _record(self, storage: object, offset: object, size: object, stride: object, itemsize: int) -> TensorView:
        if not isinstance(storage, StorageRef):
            raise pickle.UnpicklingError(f"a tensor rebuilt from {type(storage).__name__}, not from a storage")
        view = TensorView(storage, offset, size, stride, itemsize)
        self.views.append(view)
        return view

    def _rebuild_v2(self, storage: object, offset: object, size: object, stride: object, *_: object) -> TensorView:
        return self._record(storage, offset, size, stride, getattr(storage, "itemsize", 0))

    def _rebuild_v3(self, storage: object, offset: object, size: object, stride: object, *rest: object) -> TensorView:
        dtype = rest[2] if len(rest) >= 3 else None
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"a tensor rebuilt with dtype {dtype!r:.40}")
        return self._record(storage, offset, size, stride, dtype.itemsize)


def view_names(root: object) -> dict[int, str]:
    """The key each recorded ``TensorView`` is stored under, found by walking the unpickled mappings."""
    names: dict[int, str] = {}
    seen: set[int] = set()
    pending = [root]
    while pending:
        node = pending.pop()
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        for key, value in node.items():
            if isinstance(value, TensorView):
                names.setdefault(id(value), str(key))
            pending.append(value)
    return names


def check_views(views: list[TensorView], names: Mapping[int, str], origin: str) -> None:
    """Raise ``CheckpointError`` unless every view lies within its storage and repeats no element.

    A view's elements lie at ``offset + sum(index_d x stride_d)``; each must have its own bytes (no
    stride-0 or overlapping dimensions: reading such a view would make one copy per repeat, allocating
    from the claimed shape) and the last must end within the storage's declared bytes (sizes that were
    checked against the file before this is called).
    """
    for view in views:
        problem = _view_problem(view)
        if problem is not None:
            key = names.get(id(view), "(not in the state dict)")
            raise CheckpointError(
                f"{origin}: tensor {key!r} (shape {view.size!r:.60}, strides {view.stride!r:.60}, offset "
                f"{view.offset!r:.30}) {problem}; its storage {view.storage.key!r} holds {view.storage.nbytes} bytes"
            )


def _view_problem(view: TensorView) -> str | None:
    size, stride, offset = view.size, view.stride, view.offset
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)):
        return "is damaged: expected a shape and strides of one length"
    if not all(type(n) is int and 0 <= n < _INT64_LIMIT for n in (*size, *stride, offset)):
        return "is damaged: expected a shape, strides and offset of non-negative 64-bit integers"
    if math.prod(size) == 0:
        return None  # no element, no byte read
    end = 1  # elements spanned by the dimensions seen so far, smallest stride first
    for step, count in sorted((st, n) for n, st in zip(size, stride, strict=True) if n > 1):
        if step < end:
            return (
                f"repeats elements (a stride-0 or overlapping view, such as expand makes): its "
                f"{math.prod(size)} elements do not each have their own bytes; save it with .contiguous()"
            )
        end += step * (count - 1)
    needed = (offset + end) * view.itemsize  # type: ignore[operator]  # offset checked to be an int above
    if needed > view.storage.nbytes:
        return f"needs {needed} bytes of its storage"
    return None
