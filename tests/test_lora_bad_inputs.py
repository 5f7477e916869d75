"""Damaged or odd LoRA files and arguments get the engine's own errors, naming what was expected and found:
non-float or non-finite tensors, impossible factor shapes, bad PEFT settings, families told by their sizes,
LoRAs that also trained T5, and malformed strengths and ``loras=`` entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pixart_delta_core.errors import CheckpointError, InputError
from pixart_delta_core.models.lora import apply_loras
from pixart_delta_core.models.lora_config import read_lora
from pixart_delta_core.pipeline.arguments import lora_specs
from tests.helpers import TINY, random_transformer
from tests.lora_helpers import pair

pytestmark = pytest.mark.usefixtures("one_thread")

Q = "transformer.transformer_blocks.0.attn1.to_q"
LOHA = "lora_transformer_transformer_blocks_0_attn1_to_q"


def peft(module: str = Q, rank: int = 2, n_in: int = 48, n_out: int = 48) -> dict[str, torch.Tensor]:
    return {
        f"{module}.lora_A.weight": torch.randn(rank, n_in) * 0.1,
        f"{module}.lora_B.weight": torch.randn(n_out, rank),
    }


def loha(w2_a: tuple[int, int], w2_b: tuple[int, int]) -> dict[str, torch.Tensor]:
    shapes = {"w1_a": (48, 4), "w1_b": (4, 48), "w2_a": w2_a, "w2_b": w2_b}
    return {f"{LOHA}.hada_{role}": torch.randn(*shape) for role, shape in shapes.items()}


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({k: v.to(torch.int32) for k, v in peft().items()}, r"lora_A.weight' holds torch.int32; expected floating"),
        ({k: v > 0 for k, v in peft().items()}, r"holds torch.bool; expected floating"),
        (peft(rank=0), r"up \[48, 0\] and down \[0, 48\]; expected a shared, non-zero rank"),
        ({f"{Q}.lora_A.weight": torch.randn(48), f"{Q}.lora_B.weight": torch.randn(48)}, r"should be a matrix"),
        (loha((48, 3), (2, 48)), r"w2_a \[48, 3\] and w2_b \[2, 48\]; expected a shared"),
        (loha((24, 4), (4, 24)), r"multiplies a 48 -> 48 product by a 24 -> 24 one"),
        ({**peft(), f"{Q}.alpha": torch.tensor(float("nan"))}, r"to_q\.alpha' holds NaN or infinite values"),
        ({**peft(), f"{Q}.alpha": torch.tensor(float("inf"))}, r"to_q\.alpha' holds NaN or infinite values"),
        ({**peft(), f"{Q}.lora_A.weight": torch.full((2, 48), float("nan"))}, r"lora_A\.weight' holds NaN or inf"),
        ({**pair(Q), f"{Q}.lora_down.weight": torch.full((2, 48), float("nan"))}, r"lora_down\.weight' holds NaN"),
        (peft("transformer.caption_projection.linear_1", n_in=2304), r"LoRA for Sana \(.*Gemma-2's 2304-wide"),
        (peft(n_in=2240, n_out=2240), r"LoRA for Sana-1600M"),
        ({**peft("transformer.transformer_blocks.0.ff.net.0.proj", n_in=3072, n_out=12288)}, r"LoRA for Flux"),
        ({**peft(), **pair("text_encoder.encoder.block.0.layer.0.SelfAttention.q", width=64)}, r"T5 text encoder"),
        ({**peft(), **pair("lora_te_encoder_block_0_layer_1_DenseReluDense_wi", width=64)}, r"T5 text encoder"),
    ],
    ids=["int", "bool", "rank-0", "1-d", "loha-rank", "loha-shape", "alpha-nan", "alpha-inf", "weights-nan",
         "kohya-weights-nan", "sana-caption", "sana-1600m", "flux-ff", "t5", "t5-kohya"],
)  # fmt: skip
def test_bad_lora_tensors_are_refused_at_read(weights: dict[str, torch.Tensor], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        read_lora(weights)


def test_a_float_tag_flipped_to_int_is_refused(tmp_path: Path) -> None:
    save_file(peft(), str(tmp_path / "a.safetensors"))
    flipped = (tmp_path / "a.safetensors").read_bytes().replace(b'"F32"', b'"I32"')
    (tmp_path / "b.safetensors").write_bytes(flipped)
    with pytest.raises(CheckpointError, match=r"holds torch.int32; expected floating-point adapter tensors"):
        read_lora(tmp_path / "b.safetensors")


def _peft_folder(folder: Path, config: str, name: str = "adapter_model.safetensors") -> Path:
    folder.mkdir(exist_ok=True)
    save_file(peft(), str(folder / name))
    (folder / "adapter_config.json").write_text(config)
    return folder / name


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('{"peft_type": "LORA", "lora_alpha": "x"}', r"lora_alpha should be a positive number, found 'x'"),
        ('{"peft_type": "LORA", "lora_alpha": NaN}', r"lora_alpha should be a positive number, found nan"),
        ('{"peft_type": "LOHA"}', r"expected a PEFT LoRA configuration \(peft_type LORA\), found 'LOHA'"),
        ("{}", r"expected a PEFT LoRA configuration \(peft_type LORA\), found None"),
        ("[]", r"expected a JSON object, found list"),
        ("not json", r"expected UTF-8 JSON"),
    ],
)
def test_a_bad_adapter_config_of_a_peft_folder_is_refused(tmp_path: Path, config: str, message: str) -> None:
    path = _peft_folder(tmp_path, config)
    for given in (path, tmp_path):
        with pytest.raises(CheckpointError, match=message):
            read_lora(given)


def test_a_config_beside_another_file_does_not_rescale_it(tmp_path: Path) -> None:
    """ComfyUI's flat loras/ folder: an adapter_config.json there belongs to no file but adapter_model.* (or
    pytorch_lora_weights.safetensors)."""
    config = json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 16, "target_modules": ["to_q"]})
    other = _peft_folder(tmp_path, config, name="style.safetensors")
    assert {p.scale for parts in read_lora(other).targets.values() for p in parts} == {1.0}
    own = _peft_folder(tmp_path, config)
    assert {p.scale for parts in read_lora(own).targets.values() for p in parts} == {8.0}  # 16 / rank 2


@pytest.mark.parametrize("strength", [1e308, -1001.0, float("nan"), float("inf"), True, "1", None])
def test_strengths_beyond_the_bound_or_not_numbers_are_refused(strength: object) -> None:
    lora = read_lora(peft())
    with pytest.raises(InputError, match=r"a LoRA strength must be a number from -1000 to 1000"):
        apply_loras(random_transformer(TINY), [(lora, strength)])


def test_loras_entries_are_paths_or_path_strength_pairs() -> None:
    assert lora_specs("a.safetensors") == [("a.safetensors", 1.0)]  # a bare path is one LoRA at strength 1
    assert lora_specs([Path("a"), ("b", 0.5), ["c", -2]]) == [(Path("a"), 1.0), ("b", 0.5), ("c", -2.0)]
    for entry in [("a",), ("a", 1.0, 2), None, {"path": "a"}, 3]:
        with pytest.raises(InputError, match=r"expected a path or a \(path, strength\) pair, found the entry"):
            lora_specs([entry])
    for strength in ["x", None, True, 1e308]:
        with pytest.raises(InputError, match=r"the strength of the LoRA entry .* must be a number"):
            lora_specs([("a", strength)])
    with pytest.raises(InputError, match=r"expected a list of paths"):
        lora_specs({"a": 1.0})
