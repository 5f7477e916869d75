"""Loading from every layout users hold, the layout round trip, and bad files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pixart_delta_core.checkpoints.files import open_checkpoint
from pixart_delta_core.checkpoints.layouts import RenamedSource
from pixart_delta_core.checkpoints.safetensors_file import SafetensorsSource
from pixart_delta_core.checkpoints.sources import StateDictSource
from pixart_delta_core.errors import CheckpointError
from pixart_delta_core.models.transformer import inspect_transformer, load_transformer
from pixart_delta_core.models.transformer_config import DIFFUSERS_TABLE, REFERENCE_ONLY, TransformerLayout, to_diffusers
from tests.helpers import TINY_MS, random_transformer

MARKER_NAME = "pickle-ran-code"


def write_layouts(model, folder: Path) -> dict[str, Path]:
    sd = model.reference_state_dict()
    paths = {
        "pth": folder / "ref.pth",
        "prefixed-pth": folder / "prefixed.pth",
        "safetensors": folder / "ref.safetensors",
        "diffusers-file": folder / "lcm.safetensors",
        "diffusers-folder": folder / "pipeline",
    }
    torch.save({"state_dict": sd}, paths["pth"])
    torch.save({"state_dict": {f"model.diffusion_model.{k}": v for k, v in sd.items()}}, paths["prefixed-pth"])
    save_file(sd, str(paths["safetensors"]))
    diffusers = {k: v for k, v in to_diffusers(model.state_dict()).items() if k not in REFERENCE_ONLY}
    save_file(diffusers, str(paths["diffusers-file"]))
    transformer = paths["diffusers-folder"] / "transformer"
    transformer.mkdir(parents=True)
    save_file(diffusers, str(transformer / "diffusion_pytorch_model.safetensors"))
    (transformer / "config.json").write_text(
        json.dumps({"sample_size": model.config.sample_size, "num_attention_heads": model.config.num_heads})
    )
    (paths["diffusers-folder"] / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    return paths


@pytest.fixture(scope="module")
def model_and_files(tmp_path_factory):
    model = random_transformer(TINY_MS, seed=5)
    return model, write_layouts(model, tmp_path_factory.mktemp("layouts"))


@pytest.mark.parametrize("layout", ["pth", "prefixed-pth", "safetensors", "diffusers-file", "diffusers-folder"])
def test_every_layout_loads_the_same_weights(model_and_files, layout: str) -> None:
    model, paths = model_and_files
    loaded = load_transformer(paths[layout], hints={"num_heads": TINY_MS.num_heads})
    expected = model.state_dict()
    if layout.startswith("diffusers"):
        expected = {k: v for k, v in expected.items() if k != "y_embedder.y_embedding"}
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert not any(p.requires_grad for p in loaded.parameters())


def test_diffusers_folder_is_detected_as_diffusers(model_and_files) -> None:
    _, paths = model_and_files
    assert inspect_transformer(paths["diffusers-folder"]).layout is TransformerLayout.DIFFUSERS
    assert inspect_transformer(paths["diffusers-folder"] / "transformer").layout is TransformerLayout.DIFFUSERS


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_dtype_choice(model_and_files, dtype: str) -> None:
    model, paths = model_and_files
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    loaded = load_transformer(paths["pth"], dtype=dtype, hints={"num_heads": TINY_MS.num_heads})
    for key, value in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == torch_dtype
        assert torch.equal(loaded.state_dict()[key], value.to(torch_dtype)), key


def test_reference_to_diffusers_and_back_is_lossless(model_and_files) -> None:
    model, _ = model_and_files
    original = model.reference_state_dict()
    there = to_diffusers(original)
    assert "transformer_blocks.0.attn1.to_k.weight" in there and "blocks.0.attn.qkv.weight" not in there
    back = RenamedSource(StateDictSource(there), DIFFUSERS_TABLE)
    assert set(back) == set(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key


# --- bad files -------------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this calls ``Path.touch`` on a marker file: proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / MARKER_NAME
    for name, write in [
        ("zip.pth", lambda p: torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _RunsCode(marker)}, p)),
        ("legacy.pth", lambda p: p.write_bytes(pickle.dumps({"state_dict": _RunsCode(marker)}))),
    ]:
        path = tmp_path / name
        write(path)
        assert not marker.exists()
        with pytest.raises(CheckpointError, match="refused to unpickle"):
            load_transformer(path)
        assert not marker.exists(), "loading the file ran the code inside its pickle"


def test_truncated_safetensors(model_and_files, tmp_path: Path) -> None:
    _, paths = model_and_files
    data = paths["safetensors"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_transformer(cut)
    cut.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        open_checkpoint(cut)


def test_truncated_pth(model_and_files, tmp_path: Path) -> None:
    _, paths = model_and_files
    cut = tmp_path / "cut.pth"
    cut.write_bytes(paths["pth"].read_bytes()[:-4096])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_transformer(cut)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes(range(256)) * 64, "not a checkpoint"),
        (b"", "empty"),
        (b"GGUF\x03\x00\x00\x00" + bytes(64), "GGUF"),
    ],
    ids=["random-bytes", "empty", "gguf"],
)
def test_files_that_are_not_checkpoints(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_transformer(path)


def test_missing_file_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_transformer(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="no model weights"):
        load_transformer(tmp_path)


def test_a_partial_block_names_the_missing_key(model_and_files, tmp_path: Path) -> None:
    model, _ = model_and_files
    sd = model.reference_state_dict()
    del sd["blocks.1.mlp.fc2.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"missing: blocks\.1\.mlp\.fc2\.weight"):
        load_transformer(path, hints={"num_heads": TINY_MS.num_heads})


def test_a_wrong_shaped_tensor_is_named_with_both_shapes(model_and_files, tmp_path: Path) -> None:
    model, _ = model_and_files
    sd = model.reference_state_dict()
    sd["blocks.2.attn.proj.weight"] = torch.zeros(48, 40)
    path = tmp_path / "wrong.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"blocks\.2\.attn\.proj\.weight: expected \[48, 48\], found \[48, 40\]"):
        load_transformer(path, hints={"num_heads": TINY_MS.num_heads})


def test_an_extra_tensor_is_unexpected(model_and_files, tmp_path: Path) -> None:
    model, _ = model_and_files
    sd = {**model.reference_state_dict(), "blocks.0.attn.extra": torch.zeros(3)}
    path = tmp_path / "extra.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"unexpected: blocks\.0\.attn\.extra"):
        load_transformer(path, hints={"num_heads": TINY_MS.num_heads})


def test_unknown_dtype_name(model_and_files) -> None:
    _, paths = model_and_files
    with pytest.raises(CheckpointError, match="unknown weight dtype 'fp64'"):
        load_transformer(paths["pth"], dtype="fp64", hints={"num_heads": TINY_MS.num_heads})


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_weights_kept_as_stored_on_the_cpu_are_views_of_the_file(
    model_and_files, tmp_path: Path, prefix: str, monkeypatch
) -> None:
    """No copy while loading in the file's own dtype, also through a savers' key prefix; writing to a
    loaded weight never touches the file."""
    model, _ = model_and_files
    views: set[int] = set()  # addresses of the file's mapped tensors handed out
    file_view = SafetensorsSource.mapped

    def spy(self: SafetensorsSource, key: str) -> torch.Tensor | None:
        tensor = file_view(self, key)
        if tensor is not None:
            views.add(tensor.data_ptr())
        return tensor

    monkeypatch.setattr(SafetensorsSource, "mapped", spy)
    copy = tmp_path / "ref.safetensors"
    save_file({prefix + k: v for k, v in model.reference_state_dict().items()}, str(copy))
    before = copy.read_bytes()
    loaded = load_transformer(copy, dtype="fp32", hints={"num_heads": TINY_MS.num_heads})
    weight = loaded.blocks[0].attn.qkv.weight
    assert weight.data_ptr() in views, "expected a view of the mapped file, found an owned copy"
    assert torch.equal(weight, model.blocks[0].attn.qkv.weight)
    with torch.no_grad():
        weight.add_(1.0)
    assert copy.read_bytes() == before
    converted = load_transformer(copy, dtype="bf16", hints={"num_heads": TINY_MS.num_heads})
    assert converted.blocks[0].attn.qkv.weight.data_ptr() not in views
