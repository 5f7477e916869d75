"""The nodes' declarations as ComfyUI reads them, the model lists, and the loader nodes (no ComfyUI installed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.comfy_helpers import (
    BASE,
    CONTROL_COPIES,
    ENGINE,
    LCM_PIPELINE,
    MODEL_FILES,
    PACK,
    call_node,
    check_value,
    is_widget,
)
from tests.helpers import ROOT, TOKENIZER

pytestmark = pytest.mark.usefixtures("one_thread")

NODES = PACK.NODE_CLASS_MAPPINGS
host = PACK.nodes.host
OURS = ("PIXART_DELTA_MODEL", "PIXART_DELTA_T5", "PIXART_DELTA_CONTROLNET")
CORE_TYPES = ("CONDITIONING", "LATENT", "IMAGE", "VAE", "INT", "STRING", "MODEL")


# --- declarations ----------------------------------------------------------------------------------


def test_host_bridge_runs_without_comfyui() -> None:
    assert host.IN_COMFYUI is False
    assert host.torch_device().type in ("cpu", "cuda") and host.intermediate_device() == torch.device("cpu")


def test_every_node_is_registered_with_a_prefixed_id_and_a_display_name() -> None:
    assert set(NODES) == {
        "PixArtDeltaCheckpointLoader",
        "PixArtDeltaT5Loader",
        "PixArtDelta8BitLoader",
        "PixArtDeltaT5TextEncode",
        "PixArtDeltaResolution",
        "PixArtDeltaSampler",
        "PixArtDeltaControlNetLoader",
        "PixArtDeltaControlNetApply",
        "PixArtDeltaLoraLoader",
        "PixArtDeltaShapesScene",
    }
    assert set(PACK.NODE_DISPLAY_NAME_MAPPINGS) == set(NODES)
    assert all(name.startswith("PixArt-δ ") for name in PACK.NODE_DISPLAY_NAME_MAPPINGS.values())


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_declaration_is_what_comfyui_needs(node_id: str, in_models: Path) -> None:
    node = NODES[node_id]
    assert node.CATEGORY.startswith("PixArt-δ/") and len(node.DESCRIPTION) > 40
    assert callable(getattr(node, node.FUNCTION))
    assert len(node.OUTPUT_TOOLTIPS) == len(node.RETURN_TYPES)
    assert len(getattr(node, "RETURN_NAMES", node.RETURN_TYPES)) == len(node.RETURN_TYPES)
    assert all(t in OURS or t in CORE_TYPES for t in node.RETURN_TYPES)
    spec = node.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    assert set(spec.get("hidden", {}).values()) <= {"PROMPT", "UNIQUE_ID"}  # ComfyUI's hidden inputs, no widget
    for group in (spec.get("required", {}), spec.get("optional", {})):
        for name, entry in group.items():
            kind, options = entry
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
            assert isinstance(kind, list) or kind in OURS or kind in CORE_TYPES or is_widget(kind)
            if isinstance(kind, list):
                assert kind, f"{node_id}.{name}: an empty list (the model folder holds models)"
                assert all(isinstance(v, str) for v in kind)
            if is_widget(kind) and "default" in options:
                check_value(node_id, name, kind, options, options["default"])
            if kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"]


def test_seed_has_the_control_after_generate_widget() -> None:
    seed = NODES["PixArtDeltaSampler"].INPUT_TYPES()["required"]["seed"]
    assert seed[0] == "INT" and seed[1]["control_after_generate"] is True and seed[1]["max"] == 2**64 - 1


def test_empty_model_folders_give_empty_lists(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(host.MODELS_ENV, str(tmp_path))
    assert NODES["PixArtDeltaCheckpointLoader"].INPUT_TYPES()["required"]["ckpt_name"][0] == []
    monkeypatch.delenv(host.MODELS_ENV)
    assert NODES["PixArtDeltaT5Loader"].INPUT_TYPES()["required"]["t5_name"][0] == []


# --- model lists ------------------------------------------------------------------------------------


def test_model_lists_hold_files_and_model_folders(in_models: Path) -> None:
    choices = PACK.nodes.model_choices
    pipeline = LCM_PIPELINE.split("/", 1)[1]
    assert choices.TRANSFORMERS.names() == sorted(
        [Path(MODEL_FILES[k]).name for k in ("alpha", "controlnet", "lcm")] + [pipeline]
    )
    assert choices.TEXT_ENCODERS.names() == sorted([Path(MODEL_FILES["t5"]).name, pipeline])
    assert choices.CONTROLNETS.names() == sorted(Path(MODEL_FILES[k]).name for k in ("alpha", "controlnet"))
    assert choices.TRANSFORMERS.path(pipeline) == in_models / LCM_PIPELINE


def test_files_inside_a_model_folder_are_listed_as_the_folder(in_models: Path, tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "models"
    shards = root / "text_encoders" / "t5-v1_1-xxl"
    shards.mkdir(parents=True)
    for name in ("config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        (shards / name).write_bytes(b"{}")
    (root / "clip").mkdir()
    (root / "clip" / "t5xxl_fp8_e4m3fn.safetensors").write_bytes(b"{}")
    monkeypatch.setenv(host.MODELS_ENV, str(root))
    assert PACK.nodes.model_choices.TEXT_ENCODERS.names() == ["t5-v1_1-xxl", "t5xxl_fp8_e4m3fn.safetensors"]


def test_unknown_and_escaping_names_are_refused(in_models: Path) -> None:
    transformers = PACK.nodes.model_choices.TRANSFORMERS
    with pytest.raises(ENGINE.errors.CheckpointError, match="not found: looked in"):
        transformers.path("nothing.safetensors")
    with pytest.raises(ENGINE.errors.CheckpointError, match="not found"):
        transformers.path(os.path.join("..", MODEL_FILES["t5"]))  # a real file, outside the kinds


# --- loaders ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["alpha", "lcm", "controlnet", "lcm_pipeline"])
def test_checkpoint_loader_reads_every_layout(in_models: Path, key: str) -> None:
    name = Path(MODEL_FILES.get(key, LCM_PIPELINE)).name
    model, core = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name=name)
    config = model.transformer.config
    assert (config.depth, config.hidden_size, config.caption_length, config.sample_size) == (3, 144, 120, 128)
    assert config.null_caption is (key in ("alpha", "controlnet"))
    assert model.transformer.dtype == torch.float32  # auto on the CPU
    assert model.managed.patcher is None and name in repr(model)
    assert core is None  # the core MODEL: only inside a ComfyUI with PixArt support


def test_checkpoint_loader_weight_dtype(in_models: Path) -> None:
    model, _ = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name="PixArt-XL-2-1024-MS.pth", weight_dtype="bf16")
    assert model.transformer.dtype == torch.bfloat16


def test_checkpoint_loader_refuses_other_models_saying_what_they_are(
    node_models: Path, tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "misplaced.safetensors").symlink_to(node_models / MODEL_FILES["t5"])
    monkeypatch.setenv(host.MODELS_ENV, str(tmp_path))
    with pytest.raises(ENGINE.errors.CheckpointError, match="T5 text encoder"):
        call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name="misplaced.safetensors")


def test_t5_loader_from_a_folder_with_its_tokenizer(in_models: Path) -> None:
    (t5,) = call_node(NODES["PixArtDeltaT5Loader"], t5_name=LCM_PIPELINE.split("/", 1)[1], dtype="fp32")
    assert t5.encoder.width == BASE.caption_channels and t5.encoder.dtype == torch.float32
    assert t5.encoder.tokenizer.eos_token_id == 1


def test_t5_single_file_uses_comfyuis_bundled_tokenizer(in_models: Path, monkeypatch) -> None:
    monkeypatch.setattr(host, "bundled_t5_tokenizer", lambda: TOKENIZER)
    (t5,) = call_node(NODES["PixArtDeltaT5Loader"], t5_name="t5xxl_fp16.safetensors", device="cpu")
    assert t5.encoder.dtype == torch.bfloat16  # auto on the CPU
    assert t5.managed.load_device == t5.managed.offload_device == torch.device("cpu")


def test_t5_single_file_without_any_tokenizer_is_a_clear_error(in_models: Path) -> None:
    with pytest.raises(ENGINE.errors.CheckpointError, match=r"no T5 tokenizer for t5xxl_fp16\.safetensors"):
        call_node(NODES["PixArtDeltaT5Loader"], t5_name="t5xxl_fp16.safetensors")


@pytest.mark.parametrize("base", ["PixArt-XL-2-1024-ControlNet.pth", "PixArt-LCM-XL-2-1024-MS.safetensors"])
def test_controlnet_loader_on_its_own_base_and_on_the_lcm(in_models: Path, base: str) -> None:
    model, _ = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name=base, weight_dtype="bf16")
    (net,) = call_node(
        NODES["PixArtDeltaControlNetLoader"], model=model, controlnet_name="PixArt-XL-2-1024-ControlNet.pth"
    )
    assert net.controlnet.config.copies == CONTROL_COPIES and net.controlnet.dtype == torch.bfloat16


def test_controlnet_loader_refuses_a_file_without_a_controlnet(in_models: Path) -> None:
    model, _ = call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name="PixArt-XL-2-1024-MS.pth")
    with pytest.raises(ENGINE.errors.CheckpointError):
        call_node(NODES["PixArtDeltaControlNetLoader"], model=model, controlnet_name="PixArt-XL-2-1024-MS.pth")


def test_every_node_has_a_help_page() -> None:
    docs = ROOT / PACK.WEB_DIRECTORY / "docs"
    for node_id, title in PACK.NODE_DISPLAY_NAME_MAPPINGS.items():
        assert (docs / f"{node_id}.md").read_text().startswith(f"# {title}\n")
    assert not list((ROOT / PACK.WEB_DIRECTORY).rglob("*.js"))  # ComfyUI would load any .js as a frontend extension
