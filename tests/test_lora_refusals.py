"""LoRAs that cannot apply are refused before anything changes, each with an error that says why; and LoRAs on
8-bit and NF4 transformers (computed beside the quantized layers) and on the ControlNet's copies."""

from __future__ import annotations

import pytest
import torch

from pixart_delta_core.errors import CheckpointError, InputError
from pixart_delta_core.models.controlnet import ControlNetTransformer
from pixart_delta_core.models.lora import LoraLayer, LoraMode, apply_loras
from pixart_delta_core.models.lora_config import read_lora
from pixart_delta_core.models.transformer import load_transformer
from pixart_delta_core.quant.quantization import Quantization, QuantizedLinear
from tests.helpers import MID_PIXART, PIXART_HINTS, TINY, random_transformer
from tests.lora_helpers import pair

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("key", "family"),
    [
        ("lora_unet_down_blocks_0_attentions_0_proj_in", "SD 1.x"),
        ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "SDXL"),
        ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "SDXL"),
        ("lora_unet_double_blocks_0_img_attn_qkv", "Flux"),
        ("transformer.single_transformer_blocks.0.attn.to_q", "Flux"),
        ("transformer.transformer_blocks.0.ff.conv_inverted", "Sana"),
        ("transformer.transformer_blocks.0.ff.conv_depth", "Sana"),
        ("lora_unet_transformer_blocks_0_ff_conv_point", "Sana"),
        ("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q", "SD 1.x/2.x or SDXL"),
        ("lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q", "SD 1.x/2.x or SDXL"),
        ("lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_q", "SD 1.x/2.x or SDXL"),
        ("lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q", "SD 1.x/2.x or SDXL"),
        ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "a CLIP text encoder"),
    ],
)
def test_loras_of_other_families_are_refused_by_name(key: str, family: str) -> None:
    weights = {**pair("transformer.transformer_blocks.0.attn1.to_q"), **pair(key, seed=1)}
    with pytest.raises(CheckpointError, match=f"LoRA for {family}.*not for PixArt"):
        read_lora(weights)


def test_a_lora_for_a_pixart_of_another_width_is_refused() -> None:
    lora = read_lora(pair("transformer.transformer_blocks.0.attn1.to_q", width=64))
    with pytest.raises(CheckpointError, match=r"64 -> 64 layer.*maps 48 -> 48.*another width"):
        apply_loras(random_transformer(TINY), [(lora, 1.0)])


def test_a_lora_for_a_deeper_pixart_is_refused() -> None:
    lora = read_lora(pair("lora_unet_blocks_5_attn_proj"))
    with pytest.raises(CheckpointError, match=r"depth 2\) has no 'blocks.5.attn.proj'.*another depth"):
        apply_loras(random_transformer(TINY), [(lora, 1.0)])


def test_keys_that_land_nowhere_are_listed() -> None:
    weights = {**pair("transformer.transformer_blocks.0.attn1.to_q"), **pair("transformer.transformer_blocks.0.norm9")}
    weights["transformer.transformer_blocks.0.attn1.to_q.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"3 of its 5 tensors land on no module.*attn1.to_q.extra.*norm9"):
        read_lora(weights)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"transformer.proj_out.lora_A.weight": torch.zeros(2, 48)}, r"LoRA of 'transformer.proj_out' is incomplete"),
        ({"transformer.proj_out.alpha": torch.tensor(2.0)}, "holds only an alpha"),
        ({"transformer.proj_out.lora_A.weight": torch.zeros(2, 48),
          "transformer.proj_out.lora_B.weight": torch.zeros(8, 3)}, "expected a shared, non-zero rank"),
        ({**pair("transformer.proj_out"), "transformer.proj_out.alpha": torch.ones(2)}, "should be one number"),
        ({**pair("transformer.proj_out"), "transformer.proj_out.dora_scale": torch.ones(48)}, "DoRA"),
        ({**pair("transformer.proj_out"), **pair("lora_unet_proj_out")}, "mixes module namings"),
        ({**pair("transformer.transformer_blocks.0.attn1.to_q"),
          **pair("lora_transformer_transformer_blocks_0_attn1_to_q")}, "mixes"),
        ({}, "holds no tensors"),
    ],
    ids=["incomplete", "alpha-only", "rank", "alpha-shape", "dora", "namings", "namings-2", "empty"],
)  # fmt: skip
def test_broken_or_unsupported_adapters_are_refused(weights, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        read_lora(weights)


def test_two_adapters_for_one_module_are_refused() -> None:
    weights = {**pair("diffusion_model.blocks.0.attn.proj"), **pair("diffusion_model.blocks.0.attn.proj", seed=2)}
    weights.update({k.replace("lora_down", "lora_A").replace("lora_up", "lora_B"): v for k, v in pair(
        "diffusion_model.blocks.0.mlp.fc2", out=48, width=192).items()})  # fmt: skip
    read_lora(weights)  # lora_A/B and lora_down/up of different modules mix fine
    weights.update({"diffusion_model.blocks.0.attn.proj.lora_A.weight": torch.zeros(2, 48)})
    with pytest.raises(CheckpointError, match=r"'diffusion_model.blocks.0.attn.proj' holds one adapter tensor twice"):
        read_lora(weights)


# --- quantized models and the ControlNet -------------------------------------------------------------------


def _mid_lora(seed: int = 4) -> dict[str, torch.Tensor]:
    """A LoRA on every linear layer of MID_PIXART's blocks and on t_block, strong enough to matter."""
    width, hidden = MID_PIXART.hidden_size, MID_PIXART.mlp_hidden
    layers = {"attn.qkv": (width, 3 * width), "attn.proj": (width, width), "cross_attn.q_linear": (width, width),
              "cross_attn.kv_linear": (width, 2 * width), "cross_attn.proj": (width, width),
              "mlp.fc1": (width, hidden), "mlp.fc2": (hidden, width)}  # fmt: skip
    weights = {}
    for i in range(MID_PIXART.depth):
        for name, (n_in, n_out) in layers.items():
            weights.update(pair(f"diffusion_model.blocks.{i}.{name}", rank=8, width=n_in, out=n_out, seed=seed + i))
    weights.update(pair("diffusion_model.t_block.1", rank=8, width=width, out=6 * width, seed=seed))
    return weights


def _mid_inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 16, 16, generator=g)
    caption = torch.randn(2, MID_PIXART.caption_length, MID_PIXART.caption_channels, generator=g)
    return x, torch.tensor([400.0]), caption


@pytest.mark.parametrize("mode", [Quantization.INT8, Quantization.NF4], ids=lambda m: m.value)
def test_quantized_models_with_a_lora_stay_within_the_quantization_error(mode: Quantization) -> None:
    """A LoRA computed beside 8-bit / NF4 layers is as close to fp32 + LoRA as that quantization of the LoRA'd
    model's own (merged) weights is."""
    weights = random_transformer(MID_PIXART, seed=1).state_dict()
    lora = read_lora(_mid_lora())
    full = load_transformer(weights, "fp32", hints=PIXART_HINTS)
    merged = apply_loras(full, [(lora, 1.0)], LoraMode.MERGE)
    quantized = load_transformer(weights, "fp32", hints=PIXART_HINTS, quantization=mode)
    patched = apply_loras(quantized, [(lora, 1.0)])
    with torch.no_grad():
        want = merged(*_mid_inputs())
        own = load_transformer(merged.state_dict(), "fp32", hints=PIXART_HINTS, quantization=mode)(*_mid_inputs())
        got = patched(*_mid_inputs())
        lora_effect = (want - full(*_mid_inputs())).abs().max().item()
    own_error = (own - want).abs().max().item()
    error = (got - want).abs().max().item()
    assert lora_effect > 5 * own_error, "the LoRA must matter far more than the quantization"
    assert error <= 1.5 * own_error, f"{error:.4f} vs the quantization's own {own_error:.4f}"
    wrapped = [m for m in patched.modules() if isinstance(m, LoraLayer)]
    assert len(wrapped) == 7 * MID_PIXART.depth and all(isinstance(m.base_layer, QuantizedLinear) for m in wrapped)
    assert type(patched.t_block[1]) is torch.nn.Linear  # the full-precision t_block is merged (mode auto)
    with pytest.raises(InputError, match=r"cannot merge a LoRA into 'blocks.0.attn.qkv'.*quantized"):
        apply_loras(quantized, [(lora, 1.0)], LoraMode.MERGE)


def test_the_controlnet_copies_take_the_lora_of_the_blocks_they_copy() -> None:
    base = random_transformer(MID_PIXART, seed=1)
    net = ControlNetTransformer.from_base(base, copies=1)
    lora = read_lora(_mid_lora())
    patched_base = apply_loras(base, [(lora, 0.8)])
    patched_net = apply_loras(net, [(lora, 0.8)])
    assert torch.equal(patched_net.controlnet[0].copied_block.mlp.fc1.weight, patched_base.blocks[0].mlp.fc1.weight)
    assert torch.equal(net.controlnet[0].copied_block.mlp.fc1.weight, base.blocks[0].mlp.fc1.weight)  # untouched
    assert torch.equal(patched_net.controlnet[0].after_proj.weight, net.controlnet[0].after_proj.weight)
