"""A model with LoRAs applied shares the input model's tensor storage but none of its Parameter objects: moving or
casting one (``.to()``, ``requires_grad_()``) leaves the other exactly where and as it was."""

from __future__ import annotations

import pytest
import torch

from pixart_delta_core.models.lora import LoraMode, apply_loras, remove_loras
from pixart_delta_core.models.lora_config import read_lora
from tests.helpers import TINY, random_transformer
from tests.lora_helpers import pair

pytestmark = pytest.mark.usefixtures("one_thread")


def _state(model: torch.nn.Module) -> dict[str, tuple[torch.device, torch.dtype, bool, torch.Tensor]]:
    return {n: (p.device, p.dtype, p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()}


def _same(model: torch.nn.Module, before: dict) -> bool:
    now = _state(model)
    return now.keys() == before.keys() and all(
        a[:3] == b[:3] and torch.equal(a[3], b[3]) for a, b in ((now[k], before[k]) for k in before)
    )


def _pair_of_models(mode: LoraMode, what: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = random_transformer(TINY)
    lora = read_lora(pair("transformer.transformer_blocks.0.attn1.to_q"))
    patched = apply_loras(model, [(lora, 1.0)], mode)
    return (model, patched) if what == "patched" else (patched, model)


@pytest.mark.parametrize("mode", [LoraMode.MERGE, LoraMode.ON_THE_FLY])
@pytest.mark.parametrize("moved", ["patched", "input"])
@pytest.mark.parametrize("change", ["meta", "bfloat16", "requires_grad"])
def test_moving_either_model_leaves_the_other_as_it_was(mode: LoraMode, moved: str, change: str) -> None:
    kept, other = _pair_of_models(mode, moved)
    before = _state(kept)
    if change == "meta":
        other.to("meta")
    elif change == "bfloat16":
        other.to(torch.bfloat16)
    else:
        other.requires_grad_(False)
    assert _same(kept, before)
    if change == "bfloat16":  # the move did happen, on the other model only
        assert {p.dtype for p in other.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("mode", [LoraMode.MERGE, LoraMode.ON_THE_FLY])
def test_untouched_weights_share_storage_until_a_move(mode: LoraMode) -> None:
    model, patched = _pair_of_models(mode, "patched")
    ours = dict(model.named_parameters())
    theirs = dict(remove_loras(patched).named_parameters())
    untouched = [n for n in ours if not n.startswith("blocks.0.attn.qkv")]
    assert all(ours[n].data_ptr() == theirs[n].data_ptr() for n in untouched)  # no copy of untouched weights
    assert not any(ours[n] is theirs[n] for n in ours)  # but Parameter objects of its own
    assert set(map(id, model.modules())).isdisjoint(map(id, patched.modules()))  # and module objects
