"""The LoRA loader node: chains, never changes its input model, works on 8-bit models, refuses what cannot apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.comfy_helpers import BASE, ENGINE, LCM_PIPELINE, MODEL_FILES, PACK, call_node

pytestmark = pytest.mark.usefixtures("one_thread")

NODES = PACK.NODE_CLASS_MAPPINGS
LCM_LORA = Path(MODEL_FILES["lcm_lora"]).name


def _inputs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 16, 16, generator=g)
    return x, torch.tensor([500.0]), torch.randn(1, 6, BASE.caption_channels, generator=g)


def _run(model) -> torch.Tensor:
    with torch.no_grad():
        return model.transformer(*_inputs())


def _load(quantization: str = "none"):
    model, _ = call_node(
        NODES["PixArtDeltaCheckpointLoader"], ckpt_name=Path(MODEL_FILES["alpha"]).name, weight_dtype="fp32",
        quantization=quantization,
    )  # fmt: skip
    return model


def test_the_node_lists_loras_and_chains_without_changing_its_input(in_models: Path) -> None:
    assert LCM_LORA in NODES["PixArtDeltaLoraLoader"].INPUT_TYPES()["required"]["lora_name"][0]
    model = _load()
    before = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    base = _run(model)
    styled, _ = call_node(NODES["PixArtDeltaLoraLoader"], model=model, lora_name=LCM_LORA, strength=1.0)
    undone, _ = call_node(NODES["PixArtDeltaLoraLoader"], model=styled, lora_name=LCM_LORA, strength=-1.0)
    same, _ = call_node(NODES["PixArtDeltaLoraLoader"], model=model, lora_name=LCM_LORA, strength=0.0)
    assert same is model
    assert (_run(styled) - base).abs().max() > 0.01
    assert (_run(undone) - base).abs().max() <= 1e-5  # +1 then -1: back to the base, up to fp32 rounding
    assert all(torch.equal(before[k], v) for k, v in model.transformer.state_dict().items())
    assert torch.equal(_run(model), base)
    assert LCM_LORA in styled.name and styled.managed.model is styled.transformer


def test_loras_chain_on_an_8bit_model_within_the_8bit_error(in_models: Path) -> None:
    """Two chained loaders (0.4 then 0.6) on the 8-bit model against one LoRA at 1 on the fp32 model: they differ
    by no more than 8-bit weights of the LoRA'd model itself do (LLM.int8 of the merged fp32 weights)."""
    model, full = _load("int8"), _load()
    once, _ = call_node(NODES["PixArtDeltaLoraLoader"], model=model, lora_name=LCM_LORA, strength=0.4)
    twice, _ = call_node(NODES["PixArtDeltaLoraLoader"], model=once, lora_name=LCM_LORA, strength=0.6)
    want, _ = call_node(NODES["PixArtDeltaLoraLoader"], model=full, lora_name=LCM_LORA, strength=1.0)
    merged_8bit = ENGINE.models.transformer.load_transformer(want.transformer.state_dict(), quantization="int8")
    with torch.no_grad():
        own_error = (merged_8bit(*_inputs()) - _run(want)).abs().max().item()
    assert (_run(twice) - _run(want)).abs().max().item() <= 1.5 * own_error
    assert (_run(want) - _run(full)).abs().max().item() > 5 * own_error


def test_a_lora_for_another_family_is_refused_by_name(in_models: Path) -> None:
    save_file(
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 8),
         "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 2)},
        str(in_models / "loras" / "sd15_style.safetensors"),
    )  # fmt: skip
    try:
        with pytest.raises(ENGINE.errors.CheckpointError, match=r"LoRA for SD 1\.x"):
            call_node(NODES["PixArtDeltaLoraLoader"], model=_load(), lora_name="sd15_style.safetensors", strength=1.0)
    finally:
        (in_models / "loras" / "sd15_style.safetensors").unlink()


def test_a_model_file_given_as_a_lora_is_refused_naming_its_kind_and_loader(in_models: Path) -> None:
    """As generate's --lora (``cli_kinds.check_is_lora``): which model it is, and the node that loads it."""
    given = in_models / "loras" / "a_transformer.safetensors"
    given.write_bytes((in_models / MODEL_FILES["lcm"]).read_bytes())
    try:
        with pytest.raises(ENGINE.errors.InputError) as caught:
            call_node(NODES["PixArtDeltaLoraLoader"], model=_load(), lora_name=given.name, strength=1.0)
    finally:
        given.unlink()
    said = str(caught.value)
    assert said.startswith(f"lora_name {given}: expected a LoRA, found no adapter tensor in it: it is a PixArt ")
    assert said.endswith("; load it with PixArt-δ Checkpoint Loader")


def test_the_loaders_name_a_node_for_every_kind_of_model_the_command_line_tells() -> None:
    kinds = [kind for *_, kind in ENGINE.cli_kinds.inspectors_of_kinds()]
    assert sorted(PACK.nodes.model_choices.INSTEAD) == sorted(kinds) == sorted(ENGINE.errors.GIVEN_AS)


def test_a_lora_picked_in_the_checkpoint_loader_is_refused_naming_the_lora_loader(in_models: Path) -> None:
    """The engine's words ("give it as a LoRA") are the Python API's; a node names the node that loads it."""
    given = in_models / "checkpoints" / "a_lora.safetensors"
    given.write_bytes((in_models / MODEL_FILES["lcm_lora"]).read_bytes())
    try:
        with pytest.raises(ENGINE.errors.CheckpointError) as caught:
            call_node(NODES["PixArtDeltaCheckpointLoader"], ckpt_name=given.name, weight_dtype="fp32")
    finally:
        given.unlink()
    said = str(caught.value)
    assert said.startswith(f"{given}: not a PixArt transformer: it looks like a LoRA"), said
    assert said.endswith("(load it with PixArt-δ LoRA Loader)"), said


def test_the_sampler_runs_the_lora_model_and_the_input_model_still_samples_as_before(in_models: Path) -> None:
    """LCM-LoRA settings end to end through the nodes: lcm, 4 steps, guidance 0."""
    model = _load()
    styled, _ = call_node(NODES["PixArtDeltaLoraLoader"], model=model, lora_name=LCM_LORA, strength=1.0)
    (t5,) = call_node(NODES["PixArtDeltaT5Loader"], t5_name=Path(LCM_PIPELINE).name, dtype="fp32")
    (positive,) = call_node(NODES["PixArtDeltaT5TextEncode"], text="a fox", t5=t5)

    def sample(m):
        settings = {"steps": 4, "sampler": "lcm", "guidance": 0.0, "width": 64, "height": 64}
        return call_node(NODES["PixArtDeltaSampler"], model=m, positive=positive, **settings)[0]["samples"]

    before = sample(model)
    with_lora = sample(styled)
    assert torch.isfinite(with_lora).all() and (with_lora - before).abs().max() > 1e-3
    assert torch.equal(sample(model), before)


def test_the_controlnet_loader_gives_its_copies_the_models_loras_when_asked(in_models: Path) -> None:
    model = _load()
    styled, _ = call_node(NODES["PixArtDeltaLoraLoader"], model=model, lora_name=LCM_LORA, strength=0.8)
    controlnet = Path(MODEL_FILES["controlnet"]).name
    load = NODES["PixArtDeltaControlNetLoader"]
    (plain,) = call_node(load, model=styled, controlnet_name=controlnet)
    (with_loras,) = call_node(load, model=styled, controlnet_name=controlnet, apply_model_loras=True)
    (unstyled,) = call_node(load, model=model, controlnet_name=controlnet, apply_model_loras=True)
    engine = ENGINE.models
    lora = engine.lora_config.read_lora(in_models / "loras" / LCM_LORA)
    expected = engine.lora.apply_loras(plain.controlnet, [(lora, 0.8)]).state_dict()
    got, base = with_loras.controlnet.state_dict(), plain.controlnet.state_dict()
    assert any(not torch.equal(got[k], base[k]) for k in base)  # the copies took the LoRA
    assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in expected)
    assert all(torch.equal(v, base[k]) for k, v in unstyled.controlnet.state_dict().items())  # no LoRA, nothing
