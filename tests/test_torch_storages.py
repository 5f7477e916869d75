"""Storages and tensor views in PyTorch files: each checked against the file's bytes before torch reads them.

torch maps a zip archive's storage at the size its pickle declares whatever the member holds, grows a
legacy storage to fit a view larger than it, and accepts stride-0 views of any claimed shape; each case
here is refused by the engine's own error naming the tensor or storage, or (valid odd views) loads exactly.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from pixart_delta_core.checkpoints.files import open_checkpoint
from pixart_delta_core.errors import CheckpointError

WEIGHTS = {"w": torch.arange(10, dtype=torch.float32)}


def rezip(path: Path, change: Callable[[str, bytes], bytes | None]) -> Path:
    """Rewrite the archive at ``path`` member by member (valid CRCs): ``change`` returns new bytes or None to drop."""
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            new = change(name, data)
            if new is not None:
                archive.writestr(name, new)
    return path


def saved(tmp_path: Path, state: object, legacy: bool = False) -> Path:
    path = tmp_path / ("legacy.pth" if legacy else "model.pth")
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize(("length", "found"), [(8, "holds 8 bytes"), (0, "holds 0 bytes"), (48, "holds 48 bytes")])
def test_a_zip_storage_member_of_another_size_than_declared_is_refused(length: int, found: str, tmp_path: Path) -> None:
    path = rezip(saved(tmp_path, WEIGHTS), lambda n, b: (b + bytes(8))[:length] if n.endswith("data/0") else b)
    with pytest.raises(
        CheckpointError, match=f"storage '0' is declared with 10 elements .* \\(40 bytes\\), .* {found}"
    ):
        open_checkpoint(path)


def test_a_missing_zip_storage_member_is_refused(tmp_path: Path) -> None:
    path = rezip(saved(tmp_path, WEIGHTS), lambda n, b: None if n.endswith("data/0") else b)
    with pytest.raises(CheckpointError, match=r"its member '\w+/data/0' is missing"):
        open_checkpoint(path)


def test_zip_members_outside_the_archive_folder_are_refused(tmp_path: Path) -> None:
    path = saved(tmp_path, WEIGHTS)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("other/data.pkl", b"")
    with pytest.raises(CheckpointError, match="expected every member in the folder 'model'"):
        open_checkpoint(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_stride_0_view_is_refused_when_opened_naming_its_key_shape_and_storage(legacy: bool, tmp_path: Path) -> None:
    expanded = torch.zeros(1, 1, dtype=torch.float16).expand(4, 2 * 10**9)  # 2 bytes claiming 16 GB
    path = saved(tmp_path, {"lora_A.weight": expanded}, legacy)
    with pytest.raises(CheckpointError, match=r"'lora_A.weight' \(shape \(4, 2000000000\), strides \(0, 0\)") as err:
        open_checkpoint(path)  # before any tensor is read
    assert "repeats elements" in str(err.value) and "holds 2 bytes" in str(err.value)


def test_an_overlapping_view_is_refused(tmp_path: Path) -> None:
    path = saved(tmp_path, {"w": torch.arange(8.0).as_strided((3, 4), (2, 1))})  # rows share elements
    with pytest.raises(CheckpointError, match="repeats elements"):
        open_checkpoint(path)


def _legacy_with_size(tmp_path: Path, state: dict, marker: bytes, size: int) -> Path:
    """A legacy file whose first pickled size tuple ``marker`` (e.g. BININT1 4, TUPLE1) claims ``size``."""
    raw = saved(tmp_path, state, legacy=True).read_bytes()
    at = raw.index(marker)
    path = tmp_path / "patched.pth"
    path.write_bytes(raw[:at] + b"\x8a\x06" + size.to_bytes(6, "little") + raw[at + 2 :])
    return path


def test_a_legacy_view_larger_than_its_storage_is_refused_before_torch_grows_the_storage(tmp_path: Path) -> None:
    path = _legacy_with_size(tmp_path, {"w": torch.arange(4.0)}, b"K\x04\x85", 10**12)  # size (4,) -> (10**12,)
    with pytest.raises(
        CheckpointError, match=r"'w' \(shape \(1000000000000,\).* needs 4000000000000 bytes .* holds 16"
    ):
        open_checkpoint(path)


def test_a_legacy_quantized_tensor_is_refused_before_torch_allocates_its_shape(tmp_path: Path) -> None:
    with pytest.warns(UserWarning):  # torch deprecates quantized tensors
        quantized = torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8)
    path = _legacy_with_size(tmp_path, {"q": quantized}, b"K\x04\x85", 10**12)
    with pytest.raises(CheckpointError, match="a quantized tensor"):
        open_checkpoint(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_strided_views_and_module_state_dicts_load_exactly(legacy: bool, tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = nn.Linear(3, 2).state_dict()  # an OrderedDict, as most checkpoints are
    state.update({"t": base.t(), "cols": base[:, 1:5:2], "row": base[2], "p": nn.Parameter(torch.ones(3))})
    source = open_checkpoint(saved(tmp_path, state, legacy))
    for key, tensor in state.items():
        assert torch.equal(source[key], tensor), key
    assert source.mapped("t") is None and source.mapped("cols") is None  # copied by read_into, never viewed
    out = torch.empty(6, 4, dtype=torch.float64)
    source.read_into("t", out)
    assert torch.equal(out, base.t().double())


def test_a_zip_pickle_that_the_dry_run_cannot_read_is_refused(tmp_path: Path) -> None:
    path = rezip(saved(tmp_path, WEIGHTS), lambda n, b: b[: len(b) // 2] if n.endswith("data.pkl") else b)
    with pytest.raises(CheckpointError, match=r"damaged PyTorch archive: its data\.pkl"):
        open_checkpoint(path)


def test_torch_itself_maps_other_bytes_for_a_short_member(tmp_path: Path) -> None:
    """Why the member sizes are checked: torch's memory-mapped reader loads the short member without a word."""
    path = rezip(saved(tmp_path, WEIGHTS), lambda n, b: b[:8] if n.endswith("data/0") else b)
    loaded = torch.load(path, weights_only=True, mmap=True)["w"]
    assert loaded.shape == (10,) and not torch.equal(loaded, WEIGHTS["w"])
    with pytest.raises(RuntimeError, match="record size"):
        torch.load(io.BytesIO(path.read_bytes()), weights_only=True)  # its unmapped reader refuses it
