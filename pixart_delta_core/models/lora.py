"""Applying LoRAs to a PixArt transformer or its ControlNet: merged into the weights, or computed on the fly.

``apply_loras(model, [(lora, strength), ...])`` returns a new model and leaves the one it was given exactly
as it was: its modules and Parameter objects are copied (a few hundred small objects) over the same tensor
storage, so ``.to()`` on one model leaves the other where and as it was, and only the adapted layers differ.
A merged layer holds a new weight ``W + Σ strength · ΔW``; an on-the-fly layer (``LoraLayer``) keeps the base
layer untouched and adds ``Σ strength · ΔW x`` to its output. Merging is for full-precision weights; beside
8-bit and NF4 layers the LoRA is computed on the fly, because quantizing the sum again would lose the LoRA in
the quantization's rounding. Going back to the base is using the model the
LoRAs were applied to (``remove_loras`` also unwraps on-the-fly layers).

Fused layers: a LoRA on diffusers' ``to_q``/``to_k``/``to_v`` adapts rows of our fused ``qkv``. The fused
layer gets one low-rank adapter whose ``down`` stacks the parts' ``down`` matrices and whose ``up`` places
each part's ``up`` (times its scale) in that part's rows, zero elsewhere: ``up @ down`` is then exactly the
concatenation of the parts' ΔW, with one pair of matrix products per step instead of three, and a missing
part (a LoRA on ``to_q`` and ``to_v`` only) is simply zero rows.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints.sources import TensorSource
from ..errors import CheckpointError, InputError
from ..quant.quantization import QuantizedLinear
from .controlnet import ControlNetTransformer
from .lora_config import AdapterKind, AdapterPart, Lora, open_lora, read_lora
from .strengths import MAX_STRENGTH
from .transformer import PixArtTransformer

log = logging.getLogger(__name__)


class LoraMode(Enum):
    """Where a LoRA's weight difference goes."""

    AUTO = "auto"  # merged into full-precision layers, on the fly beside quantized ones
    MERGE = "merge"  # merged into every adapted layer (refused on quantized ones)
    ON_THE_FLY = "on_the_fly"  # computed beside every adapted layer, base weights untouched


@dataclass(frozen=True)
class Factor:
    """A weight difference of one layer: ``up @ down`` ([out, r] @ [r, in]), or ``up`` itself ([out, in...])
    when ``down`` is None (LoHa, LoKr, and every adapter of a convolution)."""

    up: Tensor
    down: Tensor | None = None

    def to(self, dtype: torch.dtype, device: torch.device) -> Factor:
        """The same factor with its matrices in ``dtype`` on ``device`` (the layer's compute dtype and device)."""
        down = None if self.down is None else self.down.to(device, dtype)
        return Factor(self.up.to(device, dtype), down)


def part_delta(part: AdapterPart) -> Tensor:
    """ΔW of one non-LoRA adapter part, scaled: [out_part, in] (in x kh x kw flattened for a convolution)."""
    t = part.tensors
    if part.kind is AdapterKind.LOHA:  # Hadamard product of two low-rank matrices
        delta = (t["w1_a"] @ t["w1_b"].flatten(1)) * (t["w2_a"] @ t["w2_b"].flatten(1))
    elif part.kind is AdapterKind.LOKR:  # Kronecker product of two (possibly factored) matrices
        w1 = t["w1"] if "w1" in t else t["w1_a"] @ t["w1_b"]
        w2 = t["w2"] if "w2" in t else t["w2_a"] @ t["w2_b"].flatten(1)
        delta = torch.kron(w1, w2.flatten(1))
    else:
        delta = t["up"].flatten(1) @ t["down"].flatten(1)
    return delta * part.scale


def layer_factors(parts: Sequence[AdapterPart], out_features: int, dense: bool) -> list[Factor]:
    """The factors of one of our layers (``out_features`` rows) from the adapter parts aimed at it.

    LoRA parts become one low-rank factor (see the module docstring); other kinds, or every kind when
    ``dense``, a ΔW each with zero rows outside their part.
    """
    factors: list[Factor] = []
    ups, downs = [], []
    for part in parts:
        rows = out_features // part.parts
        start = part.part * rows
        if part.kind is AdapterKind.LORA and not dense:
            up = torch.zeros(out_features, part.rank)
            up[start : start + rows] = part.tensors["up"].flatten(1) * part.scale
            ups.append(up)
            downs.append(part.tensors["down"].flatten(1))
            continue
        delta = part_delta(part)
        full = torch.zeros(out_features, delta.shape[1])
        full[start : start + rows] = delta
        factors.append(Factor(full))
    if ups:
        factors.insert(0, Factor(torch.cat(ups, dim=1), torch.cat(downs, dim=0)))
    return factors


class LoraLayer(nn.Module):
    """A layer with LoRAs computed on the fly: ``base_layer(x) + Σ strength · ΔW x``; the base is untouched."""

    def __init__(self, base_layer: nn.Module, factors: Sequence[tuple[Factor, float]]) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.strengths = [strength for _, strength in factors]
        for index, (factor, _) in enumerate(factors):  # buffers: they follow the model's .to(), not its state
            self.register_buffer(f"up_{index}", factor.up, persistent=False)
            self.register_buffer(f"down_{index}", factor.down, persistent=False)

    def factors(self) -> list[tuple[Factor, float]]:
        """The LoRAs it computes, with their strengths."""
        return [(Factor(getattr(self, f"up_{i}"), getattr(self, f"down_{i}")), s) for i, s in enumerate(self.strengths)]

    @property
    def weight(self) -> Tensor:
        """The base layer's weight (the models read their dtype and device from their layers' weights)."""
        return self.base_layer.weight

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        for index, strength in enumerate(self.strengths):
            up, down = getattr(self, f"up_{index}"), getattr(self, f"down_{index}")
            inputs = x.to(up.dtype)
            if isinstance(self.base_layer, nn.Conv2d):
                b = self.base_layer
                delta = F.conv2d(inputs, up.view(b.weight.shape), stride=b.stride, padding=b.padding)
            elif down is None:
                delta = F.linear(inputs, up)  # [..., out]
            else:
                delta = F.linear(F.linear(inputs, down), up)  # [..., r] -> [..., out]
            out = out + (strength * delta).to(out.dtype)
        return out


def _own_parameter(param: nn.Parameter, owned: dict[int, nn.Parameter]) -> nn.Parameter:
    """A new Parameter object (of the same class, with the same attributes) over the same storage.

    ``nn.Module.to()`` and ``requires_grad_()`` change a Parameter object in place (``param.data = ...``), so
    two models holding one Parameter object would move and cast together; two Parameters over one storage
    do not. ``owned`` keeps a weight shared by two modules (tied) shared in the copy."""
    if id(param) not in owned:
        clone = torch.Tensor._make_subclass(type(param), param.detach(), param.requires_grad)
        clone.__dict__.update(param.__dict__)  # a quantized Parameter's own attributes (its quantization state)
        owned[id(param)] = clone
    return owned[id(param)]


def _copy_modules(module: nn.Module, owned: dict[int, nn.Parameter] | None = None) -> nn.Module:
    """A copy of a module tree with its own module objects, Parameter objects and tensor dicts, over the same
    tensor storage: no weight is copied, and ``.to()`` on either tree leaves the other as it was."""
    owned = {} if owned is None else owned
    clone = copy.copy(module)
    clone._parameters = {n: None if p is None else _own_parameter(p, owned) for n, p in module._parameters.items()}
    clone._buffers = dict(module._buffers)
    clone._modules = {n: None if c is None else _copy_modules(c, owned) for n, c in module._modules.items()}
    return clone


def _targets(model: nn.Module, lora: Lora) -> dict[str, tuple[AdapterPart, ...]]:
    """The LoRA's adapters by the name of the layer they adapt in ``model`` (a transformer or ControlNet)."""
    if isinstance(model, PixArtTransformer):
        return dict(lora.targets)
    if isinstance(model, ControlNetTransformer):  # its copies get the adapters of the blocks they copy
        found = {}
        for name, parts in lora.targets.items():
            head, _, rest = name.partition(".")
            index, _, layer = rest.partition(".")
            if head == "blocks" and int(index) < model.config.copies:
                found[f"controlnet.{index}.copied_block.{layer}"] = parts
        return found
    raise InputError(f"LoRAs apply to a PixArt transformer or its ControlNet, not to a {type(model).__name__}")


def _sizes(layer: nn.Module) -> tuple[int, int]:
    """(out, in) of a linear layer (quantized too) or a convolution (in x kh x kw)."""
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels, math.prod(layer.weight.shape[1:])
    if isinstance(layer, nn.Linear):
        return layer.out_features, layer.in_features
    raise InputError(f"a LoRA adapts linear and convolution layers, not a {type(layer).__name__}")


def _check_fits(model: nn.Module, lora: Lora, name: str, layer: nn.Module, parts: Sequence[AdapterPart]) -> None:
    """Refuse an adapter whose sizes are not this layer's: a LoRA for a PixArt of another width."""
    out_features, in_features = _sizes(layer)
    for part in parts:
        found = _part_shape(part)
        expected = (out_features // part.parts, in_features)
        if found != expected:
            width = getattr(getattr(model, "config", None), "hidden_size", "?")
            raise CheckpointError(
                f"{lora.name}: {part.source!r} changes a {found[1]} -> {found[0]} layer, but {name!r} of this model "
                f"(width {width}) maps {expected[1]} -> {expected[0]}: the LoRA is for a PixArt of another width"
            )


def _part_shape(part: AdapterPart) -> tuple[int, int]:
    t = part.tensors
    if part.kind is AdapterKind.LORA:
        return t["up"].shape[0], math.prod(t["down"].shape[1:])
    if part.kind is AdapterKind.LOHA:
        return t["w1_a"].shape[0], math.prod(t["w1_b"].shape[1:])
    w1 = t["w1"].shape if "w1" in t else (t["w1_a"].shape[0], t["w1_b"].shape[1])
    w2 = t["w2"].shape if "w2" in t else (t["w2_a"].shape[0], math.prod(t["w2_b"].shape[1:]))
    return w1[0] * w2[0], w1[1] * math.prod(w2[1:])


def check_strength(strength: object, what: str = "a LoRA strength") -> float:
    """``strength`` as a float; ``InputError`` unless it is a real number (not a bool) with |strength| <= 1000."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not abs(strength) <= MAX_STRENGTH:
        raise InputError(f"{what} must be a number from {-MAX_STRENGTH:g} to {MAX_STRENGTH:g}, found {strength!r}")
    return float(strength)


def apply_loras(
    model: nn.Module, loras: Sequence[tuple[Lora, float]], mode: LoraMode | str = LoraMode.AUTO
) -> nn.Module:
    """``model`` with ``loras`` applied at their strengths (a real number up to ``MAX_STRENGTH`` either way; 0 = no
    change, negative = the opposite direction), stacked in order; ``model`` itself is left exactly as it was.

    ``model`` is a ``PixArtTransformer`` or a ``ControlNetTransformer`` (its copies take the adapters of the
    base blocks they copy; the rest are the base's). Raises ``CheckpointError`` when an adapter names a layer
    the model lacks (a LoRA for a deeper PixArt) or has other sizes (another width), and ``InputError`` for a
    strength that is not a number within ``MAX_STRENGTH`` or ``merge`` asked on quantized layers.
    """
    mode = LoraMode(mode)
    per_layer: dict[str, list[tuple[list[AdapterPart], float]]] = {}
    for lora, strength in loras:
        strength = check_strength(strength)
        for name, parts in _targets(model, lora).items():
            try:
                layer = model.get_submodule(name)
            except AttributeError:
                depth = getattr(getattr(model, "config", None), "depth", "?")
                raise CheckpointError(
                    f"{lora.name}: adapts {parts[0].source!r}, but this model (depth {depth}) has no {name!r}: "
                    f"the LoRA is for a PixArt of another depth or structure"
                ) from None
            _check_fits(model, lora, name, layer.base_layer if isinstance(layer, LoraLayer) else layer, parts)
            per_layer.setdefault(name, []).append((list(parts), strength))
    patched = _copy_modules(model)
    for name, applied in per_layer.items():
        parent_name, _, child = name.rpartition(".")
        parent = patched.get_submodule(parent_name)
        base = getattr(parent, child)
        setattr(parent, child, _adapted(name, base, applied, mode))
    log.info("applied %d LoRA(s) to %d layers (%s)", len(loras), len(per_layer), mode.value)
    return patched


def _adapted(name: str, base: nn.Module, applied: list[tuple[list[AdapterPart], float]], mode: LoraMode) -> nn.Module:
    earlier: list[tuple[Factor, float]] = []
    if isinstance(base, LoraLayer):  # a layer that already computes LoRAs on the fly takes more the same way
        earlier, base, mode = base.factors(), base.base_layer, LoraMode.ON_THE_FLY
    quantized = isinstance(base, QuantizedLinear)
    if mode is LoraMode.MERGE and quantized:
        raise InputError(
            f"cannot merge a LoRA into {name!r}: its weights are quantized (8-bit or 4-bit) and would lose the LoRA "
            f"in their rounding; apply it on the fly (mode 'auto' or 'on_the_fly')"
        )
    out_features, _ = _sizes(base)
    dense = isinstance(base, nn.Conv2d)
    factors = [(f, s) for parts, s in applied for f in layer_factors(parts, out_features, dense)]
    if mode is LoraMode.ON_THE_FLY or quantized:
        dtype, device = _compute(base)
        return LoraLayer(base, earlier + [(f.to(dtype, device), s) for f, s in factors])
    weight = base.weight.detach().to(torch.float32, copy=True)  # the merged sum is made in fp32, then cast once
    flat = weight.view(weight.shape[0], -1)  # [out, in (x kh x kw)]
    for factor, strength in factors:  # in place: no ΔW-sized temporary for a low-rank factor
        up = factor.up.to(flat.device)
        if factor.down is None:
            flat.add_(up, alpha=strength)
        else:
            flat.addmm_(up, factor.down.to(flat.device), alpha=strength)
    # ``base`` is the new model's own copy of the layer (``_copy_modules``): it takes the merged weight itself
    base.weight = nn.Parameter(weight.to(base.weight.dtype), requires_grad=base.weight.requires_grad)
    return base


def _compute(layer: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device an on-the-fly adapter of ``layer`` computes in: its weights', or a quantized layer's
    compute dtype (NF4 keeps it; the int8 layer's bias, loaded in the model's dtype, shows it)."""
    weight = layer.weight
    if not isinstance(layer, QuantizedLinear):
        return weight.dtype, weight.device
    dtype = getattr(layer, "compute_dtype", None) or getattr(layer.bias, "dtype", None) or torch.float32
    return dtype, weight.device


def remove_loras(model: nn.Module) -> nn.Module:
    """``model`` with every on-the-fly ``LoraLayer`` replaced by its untouched base layer (a new module tree).

    Merged layers cannot be unmerged exactly (rounding): go back to the model the LoRAs were applied to.
    """
    merged = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    clean = _copy_modules(model)
    for name in merged:
        parent_name, _, child = name.rpartition(".")
        parent = clean.get_submodule(parent_name)
        setattr(parent, child, getattr(parent, child).base_layer)
    return clean


@dataclass(frozen=True)
class InspectedLora:
    """A LoRA file as ``info`` tells it: its adapters (``read_lora``) and the tensors it holds."""

    lora: Lora
    tensors: TensorSource

    def describe(self) -> str:
        """One line: ``Lora.describe`` (kinds, layout, modules, rank), then the layers adapted (``adapted_layers``)."""
        return f"{self.lora.describe()}: {adapted_layers(self.lora)}"


def inspect_lora(path: str | Path) -> InspectedLora:
    """A LoRA file or PEFT folder, read strictly (``read_lora``: CheckpointError for anything else). Unlike the other
    inspectors it reads the tensors, to check every adapter whole: a LoRA's are small."""
    return InspectedLora(read_lora(path), open_lora(path)[0])


def adapted_layers(lora: Lora) -> str:
    """The layers ``lora`` adapts, in our module names: each layer of the blocks with the blocks it is adapted in
    ("attn.proj, attn.qkv of blocks 0-27"), a fused layer adapted in some of its parts with how many ("attn.qkv (2 of
    3 parts)"), then the layers outside the blocks ("t_block.1")."""
    in_blocks: dict[str, list[int]] = {}
    outside = []
    for module, parts in lora.targets.items():
        name = module if len(parts) == parts[0].parts else f"{module} ({len(parts)} of {parts[0].parts} parts)"
        if (block := re.fullmatch(r"blocks\.(\d+)\.(.+)", name)) is not None:
            in_blocks.setdefault(block[2], []).append(int(block[1]))
        else:
            outside.append(name)
    layers_of: dict[str, list[str]] = {}  # the blocks, in words -> the layers adapted in exactly those
    for layer, blocks in in_blocks.items():
        layers_of.setdefault(_blocks(sorted(blocks)), []).append(layer)
    said = [f"{', '.join(sorted(layers))} of {blocks}" for blocks, layers in layers_of.items()]
    return "; ".join(said + sorted(outside))


def _blocks(numbers: list[int]) -> str:
    """Sorted block numbers in words, as runs: [0, 1, 2, 5, 7, 8] -> "blocks 0-2, 5, 7-8"; [7] -> "block 7"."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    spans = ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
    return f"block{'s' * (len(numbers) > 1)} {spans}"
