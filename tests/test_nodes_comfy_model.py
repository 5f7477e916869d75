"""The core-MODEL bridge (``nodes/comfy_model.py``) without ComfyUI: its pure parts, and the plain fallback (no core
MODEL, no core control) that keeps the pack loading outside ComfyUI. In a real ComfyUI:
``tests/test_comfyui_core_model.py``."""

from __future__ import annotations

import copy
import types
from dataclasses import replace
from typing import ClassVar

import pytest
import torch

from tests.comfy_helpers import BASE, ENGINE, PACK

BRIDGE = PACK.nodes.comfy_model
SIGMA = replace(BASE, caption_length=300, micro_conditions=False)  # PixArt-Σ reads 300 caption tokens


def test_outside_comfyui_there_is_no_core_model_and_no_core_control() -> None:
    assert BRIDGE.CORE_MODEL is False
    transformer = ENGINE.models.transformer.PixArtTransformer(BASE, device="meta")
    assert BRIDGE.model_patcher(transformer, torch.device("cpu"), torch.device("cpu")) is None
    assert BRIDGE.core_control(object(), {"attention_mask": None}) == {}


def test_outside_comfyui_the_loaders_build_plain_layers_and_nothing_is_there() -> None:
    for mode in ENGINE.quant.quantization.Quantization:
        assert BRIDGE.layer_ops(mode) is ENGINE.ops.Ops  # ComfyUI's cast-capable layers only inside ComfyUI
    assert BRIDGE.MISSING == ["ComfyUI"]


def test_missing_pieces_names_each_dotted_attribute_an_older_comfyui_lacks() -> None:
    model_base = types.ModuleType("comfy.model_base")
    model_base.PixArt = type("PixArt", (), {})
    model_base.BaseModel = type("BaseModel", (), {"extra_conds": lambda self: {}})
    required = ((model_base, "PixArt"), (model_base, "BaseModel._apply_model"), (model_base, "BaseModel.extra_conds"))
    assert BRIDGE.missing_pieces(required) == ["comfy.model_base.BaseModel._apply_model"]
    assert BRIDGE.missing_pieces([(model_base, "Nothing.here")]) == ["comfy.model_base.Nothing.here"]


WIRED = {
    "3": {"class_type": "PixArtDeltaCheckpointLoader", "inputs": {"ckpt_name": "x.pth"}},
    "4": {"class_type": "PixArtDeltaSampler", "inputs": {"model": ["3", 0], "seed": 1}},
    "5": {"class_type": "KSampler", "inputs": {"model": ["3", 1], "steps": 20}},
}


def test_a_wired_empty_core_model_is_refused_before_loading_and_naming_its_readers() -> None:
    with pytest.raises(ENGINE.errors.InputError, match=r"connected to KSampler \(node 5\).*lacks ComfyUI"):
        BRIDGE.refuse_missing_core_model(WIRED, "3", 1)
    unwired = {k: v for k, v in WIRED.items() if k != "5"}
    BRIDGE.refuse_missing_core_model(unwired, "3", 1)  # only the pack's own model output is used
    BRIDGE.refuse_missing_core_model(WIRED, "4", 1)  # another node's output
    BRIDGE.refuse_missing_core_model(None, None, 1)  # a script calling the node: no workflow to read
    loader = PACK.nodes.loaders.CheckpointLoader
    assert loader.INPUT_TYPES()["hidden"] == {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}
    with pytest.raises(ENGINE.errors.InputError, match="connected to KSampler"):  # before the unknown file is looked up
        loader().load("not-there.pth", prompt=WIRED, unique_id="3")
    with pytest.raises(ENGINE.errors.InputError, match="connected to KSampler"):
        PACK.nodes.lora.LoraLoader().load(object(), "not-there.safetensors", prompt=WIRED, unique_id="3")
    low_memory = {**WIRED, "5": {"class_type": "KSampler", "inputs": {"model": ["3", 2]}}}
    with pytest.raises(ENGINE.errors.InputError, match="connected to KSampler"):
        PACK.nodes.loaders.LowMemoryLoader().load("t5", "int8", "not-there.pth", prompt=low_memory, unique_id="3")


def test_a_core_controlnet_already_in_the_conditioning_is_refused() -> None:
    with pytest.raises(ENGINE.errors.InputError, match="core ControlNet"):
        BRIDGE.core_control(object(), {"control": object()})


def test_the_family_and_unet_config_follow_the_weights() -> None:
    assert BRIDGE.image_model(BASE) == "pixart_alpha" and BRIDGE.image_model(SIGMA) == "pixart_sigma"
    config = BRIDGE.unet_config(BASE)
    assert config["disable_unet_model_creation"] is True  # the engine's transformer takes the network's place
    assert (config["depth"], config["hidden_size"], config["num_heads"]) == (3, 144, 2)  # LoRA key maps read these
    assert (config["caption_channels"], config["model_max_length"], config["micro_condition"]) == (32, 120, True)
    assert BRIDGE.unet_config(SIGMA)["micro_condition"] is False


def test_micro_conditions_come_from_c_size_else_the_transformer_takes_the_latent_size() -> None:
    assert BRIDGE.image_size(None) is None
    c_size = torch.tensor([[768.0, 1024.0], [768.0, 1024.0]], dtype=torch.float16)  # cast by core to the model dtype
    assert BRIDGE.image_size(c_size) == (768, 1024)


def test_caption_conds_honour_the_mask_and_the_models_caption_length() -> None:
    embeddings = torch.randn(1, 120, 32)
    mask = torch.zeros(1, 120, dtype=torch.long)
    mask[:, :9] = 1
    kept, kept_mask = BRIDGE.caption_conds(BASE, embeddings, {"attention_mask": mask})
    assert torch.equal(kept, embeddings[:, :9]) and kept_mask.tolist() == [[1] * 9]  # trailing padding dropped
    unmasked, all_real = BRIDGE.caption_conds(BASE, embeddings[:, :9], {})  # core CLIPTextEncode: no mask
    assert torch.equal(unmasked, kept) and torch.equal(all_real, kept_mask)
    longer, _ = BRIDGE.caption_conds(BASE, torch.randn(1, 150, 32), {})
    assert longer.shape == (1, 120, 32)  # cut to what the model reads
    with pytest.raises(ENGINE.errors.InputError, match="32-wide"):
        BRIDGE.caption_conds(BASE, torch.randn(1, 5, 64), {})


def test_forget_load_state_clears_comfyuis_marks_on_copied_layers_only() -> None:
    class CastLinear(torch.nn.Linear):  # ComfyUI's layers keep these as class defaults
        comfy_cast_weights = False
        weight_function: ClassVar[list] = []
        bias_function: ClassVar[list] = []

    original = torch.nn.Sequential(CastLinear(2, 2), CastLinear(2, 2))
    for layer in original:  # as ComfyUI leaves a layer it streamed with a weight patch
        layer.comfy_patched_weights, layer.prev_comfy_cast_weights, layer.comfy_cast_weights = True, False, True
        layer.weight_function = ["patch of the original model"]
    copied = copy.copy(original[1])  # what merging a LoRA into that layer makes
    model = torch.nn.Sequential(original[0], copied)
    BRIDGE.forget_load_state(model, original)
    assert not hasattr(copied, "comfy_patched_weights") and not hasattr(copied, "prev_comfy_cast_weights")
    assert copied.comfy_cast_weights is False and copied.weight_function == [] and copied.bias_function == []
    shared = original[0]  # still the original's layer, loaded as it was
    assert shared.comfy_patched_weights and shared.comfy_cast_weights and shared.weight_function
