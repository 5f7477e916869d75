"""ComfyUI's scaled fp8 T5 (fp8 weights, a per-linear scale_weight, a scaled_fp8 marker) read as its dequantized
weights, equal to transformers' T5 holding those weights; other quantization schemes refused by name.

Tolerance: max abs difference <= 1e-5 in fp32 (encoder outputs O(1)): both sides hold identical fp32 weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pixart_delta_core.errors import CheckpointError
from pixart_delta_core.text.t5 import inspect_t5, load_t5
from tests.helpers import random_t5, t5_file_weights

FP8 = torch.float8_e4m3fn
LINEARS = (".q.weight", ".k.weight", ".v.weight", ".o.weight", ".wi_0.weight", ".wi_1.weight", ".wo.weight")


def scaled_fp8(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A file as ComfyUI's scaled fp8 T5 holds it, and the dequantized weights it stands for."""
    stored, dequantized = {"scaled_fp8": torch.empty(0, dtype=FP8)}, {}
    for key, weight in weights.items():
        if not key.endswith(LINEARS):
            stored[key] = dequantized[key] = weight
            continue
        scale = weight.abs().max().float() / torch.finfo(FP8).max
        stored[key] = (weight / scale).to(FP8)
        layer = key.removesuffix(".weight")
        stored[f"{layer}.scale_weight"] = scale.reshape(())
        stored[f"{layer}.scale_input"] = torch.ones(())
        dequantized[key] = stored[key].float() * scale
    return stored, dequantized


def test_scaled_fp8_reads_as_weights_times_scales_equal_to_transformers(tmp_path: Path) -> None:
    model = random_t5(seed=3)
    stored, dequantized = scaled_fp8(t5_file_weights(model))
    path = tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors"
    save_file(stored, str(path))
    reference = random_t5(seed=3)
    reference.load_state_dict(dequantized, strict=False)  # the tied embedding is the same tensor
    ids = torch.randint(0, 32128, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ours = load_t5(path, torch.float32)
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask).last_hidden_state
        want = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        plain = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (got - want).abs().max().item() <= 1e-5
    assert (got - plain).abs().max().item() > 1e-4  # fp8 rounding is really in the weights read


@pytest.mark.parametrize(
    ("suffix", "scheme"),
    [
        (".weight_scale_inv", "block-scaled fp8"),
        (".weight_scale", r"a per-tensor scaled format \(weight_scale"),
        (".absmax", "bitsandbytes 4-bit"),
    ],
)
def test_other_quantization_schemes_are_refused_by_name(tmp_path: Path, suffix: str, scheme: str) -> None:
    weights = t5_file_weights(random_t5(seed=1))
    weights["encoder.block.0.layer.0.SelfAttention.q" + suffix] = torch.ones(())
    path = tmp_path / "t5.safetensors"
    save_file(weights, str(path))
    with pytest.raises(CheckpointError, match=f"a T5 stored in {scheme}"):
        inspect_t5(path)
