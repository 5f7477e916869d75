"""Property-based fuzzing of every file kind the pack reads: any bytes give the file's exact tensors or our error.

Valid tiny files (safetensors, zip .pth, legacy .pth, a sharded diffusers folder's JSON) are damaged by
byte flips, truncations, insertions, deletions, overwrites and header edits. A fifth kind rebuilds zip .pth
archives with valid CRCs around a tensor of odd strides (stride 0, overlapping, offset, huge claimed
dimensions), with a storage member resized and byte edits in the pickle: what the CRCs cannot catch. For
each case, opening it and reading every tensor must either give exactly the tensors an independent reader
finds in the file (safetensors: the safetensors library; legacy .pth and rebuilt zip archives: torch.load,
unmapped, which checks member sizes; zip .pth and folders, whose bytes are checksummed or untouched: the
original tensors) or raise a ``PixArtDeltaError``: never another exception, never a hang, never a huge
allocation. The cases run in a child process, each under an alarm, with its address space capped; the
parent gives the child a wall-clock limit, so a hang fails instead of stalling.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from tests.fuzz_harness import cap_address_space, run_child, within_alarm

KINDS = ("safetensors", "zip", "legacy", "folder", "rebuilt zip")
EXAMPLES = 200  # per kind: 12 s for the five kinds on a quiet core, about 60 s on a busy shared one

WEIGHTS = {
    "a": torch.arange(256, dtype=torch.float32).reshape(16, 16) / 7,  # the tensors' bytes outweigh the framing
    "b": torch.linspace(-1, 1, 128, dtype=torch.float16),
    "c": torch.linspace(3, -3, 64, dtype=torch.bfloat16),
}


@pytest.mark.skipif(sys.platform != "linux", reason="the child caps its memory with RLIMIT_AS and SIGALRM (Linux)")
def test_damaged_files_give_their_exact_tensors_or_our_error() -> None:
    run_child(__file__, KINDS, EXAMPLES)


# --- the child: everything below runs in the fuzzing process --------------------------------------------


def write_valid(kind: str, folder: Path) -> Path:
    """A valid tiny file (or folder) of ``kind`` holding ``WEIGHTS``."""
    from safetensors.torch import save_file

    if kind == "safetensors":
        path = folder / "w.safetensors"
        save_file(WEIGHTS, str(path), metadata={"format": "pt"})
    elif kind in ("zip", "legacy"):
        path = folder / "w.pth"
        torch.save(WEIGHTS, path, _use_new_zipfile_serialization=kind == "zip")
    else:
        path = folder / "model"
        path.mkdir()
        shards = {"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-2.safetensors"}
        for shard in set(shards.values()):
            save_file({k: v for k, v in WEIGHTS.items() if shards[k] == shard}, str(path / shard))
        index = {"metadata": {"total_size": 1408}, "weight_map": shards}
        (path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
        (path / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel", "num_layers": 2}))
    return path


def mutate(data: bytes, edits: list[tuple]) -> bytes:
    out = bytearray(data)
    for op, at, arg in edits:
        at %= len(out) + 1
        if op == "flip" and at < len(out):
            out[at] ^= arg
        elif op == "truncate":
            del out[at:]
        elif op == "insert":
            out[at:at] = arg
        elif op == "delete":
            del out[at : at + arg]
        elif op == "overwrite":
            out[at : at + len(arg)] = arg
    return bytes(out)


def edit_json(data: bytes, path: list[int], value: object, header: bool) -> bytes:
    """Replace one value inside a JSON document (a safetensors header when ``header``) by ``value``."""
    raw = data[8 : 8 + int.from_bytes(data[:8], "little")] if header else data
    doc = json.loads(raw)
    node = doc
    for step in path:
        if not isinstance(node, (dict, list)) or not node:
            break
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = keys[step % len(keys)]
        if not isinstance(node[key], (dict, list)) or not node[key]:
            node[key] = value
            break
        node = node[key]
    encoded = json.dumps(doc).encode()
    return len(encoded).to_bytes(8, "little") + encoded + data[8 + len(raw) :] if header else encoded


def outcome(path: Path) -> dict[str, torch.Tensor] | None:
    """Every tensor the pack reads from ``path``, or None when it refuses with its own error."""
    from pixart_delta_core.checkpoints.files import folder_config, open_checkpoint
    from pixart_delta_core.errors import PixArtDeltaError

    try:
        source = open_checkpoint(path)
        assert isinstance(folder_config(source), dict)
        return {key: source[key].clone() for key in source}
    except PixArtDeltaError as err:
        cause = err.__cause__
        if isinstance(cause, MemoryError) or "allocate" in str(cause):
            raise AssertionError(f"a huge allocation was tried before the file was refused: {err}") from err
        return None


def independent_read(kind: str, path: Path) -> dict[str, torch.Tensor] | None:
    """What another reader finds in the damaged file (None: it refuses it too)."""
    if kind == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
        except Exception:
            return None
    if kind == "legacy":
        return torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)  # sizes checked
    if kind == "rebuilt zip":  # our checks passed, so its views fit its storages: nothing huge is allocated
        try:
            return torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
        except Exception:
            return None
    return WEIGHTS  # zip members are checksummed, a folder's tensors untouched: only the original may load


def same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> bool:
    def raw(t: torch.Tensor) -> bytes:
        dense = torch.empty(t.shape, dtype=t.dtype).copy_(t)  # strides 1 throughout (contiguous() keeps a size-1 dim's)
        return dense.view(torch.uint8).numpy().tobytes() if t.numel() else b""

    return ours.keys() == theirs.keys() and all(
        ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape and raw(ours[k]) == raw(theirs[k])
        for k in ours
    )


def check_case(kind: str, valid: Path, work: Path, target: str, edits: list[tuple], json_edit: tuple | None) -> bool:
    """Check one damaged case; True when the pack loaded it (with the right tensors), False when it refused."""
    case = work / "case"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir()
    path = case / valid.name
    if valid.is_dir():
        shutil.copytree(valid, path)
        damaged = path / target
    else:
        shutil.copy(valid, path)
        damaged = path
    data = damaged.read_bytes()
    if json_edit is not None:
        data = edit_json(data, *json_edit, header=kind == "safetensors")
    damaged.write_bytes(mutate(data, edits))
    return judge(kind, path, f"{edits} {json_edit}")


def write_rebuilt(work: Path, dims: list[tuple[int, int]], offset: int, member_len: int | None, edits: list) -> Path:
    """A zip .pth holding ``a`` and a view ``v`` of ``dims`` (size, stride) pairs at ``offset``, rebuilt with valid
    CRCs after ``v``'s storage member is cut or padded to ``member_len`` bytes and ``edits`` damage data.pkl."""
    import zipfile

    huge = next((i for i, (n, _) in enumerate(dims) if n > 64), None)  # one huge dim at most, with stride 0
    dims = [(n, 0) if i == huge else (min(n, 5), st) for i, (n, st) in enumerate(dims)]
    size, stride = [n for n, _ in dims], [st for _, st in dims]
    extent = offset + sum((n - 1) * st for n, st in dims) + 1 if all(size) else offset
    storage = torch.arange(max(extent, 1), dtype=torch.float32).untyped_storage()
    view = torch.empty(0).set_(storage, offset, size, stride)  # the storage holds every element: no allocation
    buffer = io.BytesIO()
    torch.save({"a": WEIGHTS["a"], "v": view}, buffer)
    with zipfile.ZipFile(buffer) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    path = work / "rebuilt.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            if name.endswith("/data/1") and member_len is not None:  # v's storage (a's is data/0)
                data = (data + bytes(member_len))[:member_len]
            archive.writestr(name, mutate(data, edits) if name.endswith("/data.pkl") else data)
    return path


def judge(kind: str, path: Path, label: str) -> bool:
    """True when the pack loaded ``path`` with the tensors an independent reader finds, False when it refused."""
    ours = within_alarm(f"{kind} case {label}", lambda: outcome(path))
    if ours is not None:
        theirs = independent_read(kind, path)
        assert theirs is not None, f"we loaded a {kind} file the independent reader refuses: {label}"
        assert same(ours, theirs), f"we loaded other tensors than the {kind} file holds: {label}"
    return ours is not None


def fuzz(kind: str) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    cap_address_space()

    position = st.integers(0, 4096)
    edit = st.one_of(
        st.tuples(st.just("flip"), position, st.integers(1, 255)),
        st.tuples(st.just("truncate"), position, st.none()),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), position, st.integers(1, 64)),
        st.tuples(st.just("overwrite"), position, st.binary(min_size=1, max_size=8)),
    )
    value = st.one_of(
        st.sampled_from([None, True, 0, -1, 1, 7, 2**31, 2**63, 10**12, 1e308, "", "I32", "BOOL", "F16", "../x"]),
        st.lists(st.integers(-2, 2**40), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.text(max_size=8),
    )
    json_edit = st.none() if kind in ("zip", "legacy") else st.tuples(st.lists(st.integers(0, 8), max_size=3), value)
    targets = st.sampled_from(["diffusion_pytorch_model.safetensors.index.json", "config.json"])
    dim = st.tuples(st.one_of(st.integers(0, 5), st.sampled_from([2**31, 2**40, 2**58])), st.integers(0, 6))
    member_len = st.one_of(st.none(), st.integers(0, 512))
    settle = settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "valid").mkdir()
        valid = None if kind == "rebuilt zip" else write_valid(kind, work / "valid")
        count = loaded = 0

        @settle
        @given(target=targets, edits=st.lists(edit, max_size=3), json_edit=json_edit)
        def run(target: str, edits: list[tuple], json_edit: tuple | None) -> None:
            nonlocal count, loaded
            count += 1
            loaded += check_case(kind, valid, work, target, edits, json_edit)

        @settle
        @given(dims=st.lists(dim, min_size=1, max_size=3), offset=st.integers(0, 6), member_len=member_len,
               edits=st.lists(edit, max_size=2))  # fmt: skip
        def run_rebuilt(dims: list[tuple[int, int]], offset: int, member_len: int | None, edits: list) -> None:
            nonlocal count, loaded
            count += 1
            path = write_rebuilt(work, dims, offset, member_len, edits)
            loaded += judge(kind, path, f"{dims} offset {offset} member {member_len} {edits}")

        run_rebuilt() if valid is None else run()
    print(
        f"{kind}: {count} cases, {loaded} loaded with the file's exact tensors, {count - loaded} refused by our error"
    )


if __name__ == "__main__":
    for kind in KINDS:
        fuzz(kind)
