"""LoRA parity with peft on diffusers' PixArt transformer: one random adapter per kind, written in every layout we
read, applied merged and on the fly.

Tolerance: max abs difference <= 1e-5 in fp32 (outputs are O(1)); the LoRA itself moves the output by O(0.1-1),
so a dropped or mis-scaled module fails by far.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pixart_delta_core.models.lora import LoraMode, apply_loras, remove_loras
from pixart_delta_core.models.lora_config import Naming, read_lora
from tests.helpers import TINY_MS, diffusers_twin, random_transformer
from tests.lora_helpers import (
    ALPHA,
    ALPHAS,
    RANK,
    RANKS,
    TARGETS,
    kohya_layout,
    lycoris_layout,
    peft_adapter,
    peft_layout,
    reference_layout,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is many times faster on busy cores

TOLERANCE = 1e-5
CONFIG = TINY_MS  # micro-conditions: the size embedders are adapted too


def _inputs():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, CONFIG.in_channels, 16, 24, generator=g)
    caption = torch.randn(2, 9, CONFIG.caption_channels, generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 4:] = 0
    return x, torch.tensor([700.0, 20.0]), caption, mask


def _run_twin(twin) -> torch.Tensor:
    x, t, caption, mask = _inputs()
    added = {"resolution": torch.tensor([[128.0, 192.0]] * 2), "aspect_ratio": torch.tensor([[16 / 24]] * 2)}
    with torch.no_grad():
        return twin(x, encoder_hidden_states=caption, timestep=t, encoder_attention_mask=mask, added_cond_kwargs=added)[
            0
        ]


def _run(model) -> torch.Tensor:
    with torch.no_grad():
        return model(*_inputs())


@pytest.fixture(scope="module")
def lora_case():
    """Our random model, its output, the diffusers+peft output with a random LoRA, and peft's adapter."""
    model = random_transformer(CONFIG, seed=3)
    twin = diffusers_twin(model)
    base = _run_twin(twin)
    state = peft_adapter(twin, "lora")
    return model, _run(model), base, _run_twin(twin), state, twin


def _layouts(state, twin) -> dict[str, tuple[dict, Naming]]:
    return {
        "peft": (peft_layout(state, twin, "transformer.", with_alpha=True), Naming.PEFT),
        "reference-peft": (peft_layout(state, twin, "base_model.model.", with_alpha=False), Naming.REFERENCE_PEFT),
        "unet-peft": (peft_layout(state, twin, "unet.base_model.model.", with_alpha=False), Naming.REFERENCE_PEFT),
        "onetrainer": (kohya_layout(state, twin), Naming.KOHYA),
        "kohya-reference": (reference_layout(state, twin, "lora_unet_", "_"), Naming.KOHYA),
        "comfyui": (reference_layout(state, twin, "diffusion_model.", "."), Naming.COMFYUI),
    }


LAYOUTS = ["peft", "reference-peft", "unet-peft", "onetrainer", "kohya-reference", "comfyui"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", [LoraMode.MERGE, LoraMode.ON_THE_FLY], ids=lambda m: m.value)
def test_every_lora_layout_matches_peft(lora_case, layout: str, mode: LoraMode) -> None:
    model, ours_base, base, want, state, twin = lora_case
    assert (ours_base - base).abs().max() <= 1e-4  # the models agree before any LoRA
    weights, naming = _layouts(state, twin)[layout]
    lora = read_lora(weights)
    assert lora.naming is naming
    got = _run(apply_loras(model, [(lora, 1.0)], mode))
    assert (want - base).abs().max() > 0.05, "the LoRA must move the output well beyond the tolerance"
    diff = (got - want).abs().max().item()
    assert diff <= TOLERANCE, f"{layout}: max abs difference {diff:.3g} > {TOLERANCE}"


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_lycoris_loha_and_lokr_match_peft(kind: str) -> None:
    model = random_transformer(CONFIG, seed=3)
    twin = diffusers_twin(model)
    base = _run_twin(twin)
    state = peft_adapter(twin, kind)
    want = _run_twin(twin)
    lora = read_lora(lycoris_layout(state, twin, kind))
    assert lora.kinds == [{"loha": "LoHa", "lokr": "LoKr"}[kind]]
    assert (want - base).abs().max() > 0.05
    for mode in (LoraMode.MERGE, LoraMode.ON_THE_FLY):
        diff = (_run(apply_loras(model, [(lora, 1.0)], mode)) - want).abs().max().item()
        assert diff <= TOLERANCE, f"{kind} {mode.value}: max abs difference {diff:.3g}"


def test_a_file_on_disk_reads_like_its_state_dict(lora_case, tmp_path) -> None:
    model, _, _, want, state, twin = lora_case
    path = tmp_path / "style.safetensors"
    save_file({k: v.contiguous() for k, v in kohya_layout(state, twin).items()}, str(path))
    got = _run(apply_loras(model, [(read_lora(path), 1.0)]))
    assert (got - want).abs().max().item() <= TOLERANCE


def test_a_peft_adapter_folder_takes_its_alphas_from_adapter_config(lora_case, tmp_path) -> None:
    """The reference's PEFT folders: no alpha in the tensors, lora_alpha and alpha_pattern in adapter_config.json."""
    from peft import LoraConfig

    model, _, _, want, state, _ = lora_case
    LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, rank_pattern=RANKS, alpha_pattern=ALPHAS
    ).save_pretrained(str(tmp_path))
    save_file(
        {f"base_model.model.{k}": v.contiguous() for k, v in state.items()}, str(tmp_path / "adapter_model.safetensors")
    )
    for path in (tmp_path, tmp_path / "adapter_model.safetensors"):  # the folder, or its file beside the config
        got = _run(apply_loras(model, [(read_lora(path), 1.0)]))
        assert (got - want).abs().max().item() <= TOLERANCE


def test_merged_and_on_the_fly_agree_and_the_base_is_untouched(lora_case) -> None:
    model, ours_base, _, _, state, twin = lora_case
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = read_lora(peft_layout(state, twin, "transformer.", with_alpha=True))
    merged = apply_loras(model, [(lora, 0.7)], LoraMode.MERGE)
    fly = apply_loras(model, [(lora, 0.7)], LoraMode.ON_THE_FLY)
    assert (_run(merged) - _run(fly)).abs().max().item() <= TOLERANCE
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(_run(model), ours_base)
    assert torch.equal(_run(remove_loras(fly)), ours_base)  # unloading on-the-fly layers gives the base exactly
    assert merged.blocks[0].attn.qkv is not model.blocks[0].attn.qkv
    shared = merged.blocks[0].scale_shift_table.data_ptr() == model.blocks[0].scale_shift_table.data_ptr()
    assert shared  # untouched tensors share their storage (with Parameter objects of their own)


@pytest.mark.parametrize("mode", [LoraMode.MERGE, LoraMode.ON_THE_FLY], ids=lambda m: m.value)
def test_strength_zero_gives_the_base_exactly_and_strengths_scale_and_stack(lora_case, mode: LoraMode) -> None:
    model, ours_base, _, want, state, twin = lora_case
    lora = read_lora(kohya_layout(state, twin))
    assert torch.equal(_run(apply_loras(model, [(lora, 0.0)], mode)), ours_base)
    # ΔW is linear in the strength: +s and -s are symmetric around the base in the weights; two stacked halves
    # are one whole LoRA.
    plus = apply_loras(model, [(lora, 0.5)], mode).blocks[1].mlp.fc1
    minus = apply_loras(model, [(lora, -0.5)], mode).blocks[1].mlp.fc1
    x = torch.randn(3, CONFIG.hidden_size)
    base_fc1 = model.blocks[1].mlp.fc1
    with torch.no_grad():
        assert torch.allclose(plus(x) + minus(x), 2 * base_fc1(x), atol=1e-5)
    stacked = apply_loras(model, [(lora, 0.5), (lora, 0.5)], mode)
    assert (_run(stacked) - want).abs().max().item() <= TOLERANCE
