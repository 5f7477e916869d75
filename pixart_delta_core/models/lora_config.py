"""LoRA files for the PixArt transformer: their layouts, detected from the keys, and the tables to our module names.

Users share PixArt LoRAs in several layouts; each is recognised by its keys, never by the file's name:

- PEFT/diffusers: ``transformer.<diffusers module>.lora_A.weight`` / ``lora_B.weight``, optional ``.alpha``;
- the reference's PEFT scripts: the same under ``base_model.model.`` or ``unet.base_model.model.``, no alpha;
- kohya / OneTrainer: ``lora_transformer_<module>`` or ``lora_unet_<module>`` with the dots of a diffusers or a
  reference module path joined by underscores, ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``;
- ComfyUI: ``diffusion_model.<reference module>`` with either pair of names;
- LyCORIS LoHa (``hada_w1_a``...) and LoKr (``lokr_w1``...) in any of these namings.

Diffusers module names reach ours through the transformer's own key table (``DIFFUSERS_TABLE``): diffusers'
separate ``to_q``/``to_k``/``to_v`` are parts of our fused ``attn.qkv`` (``kv_linear`` likewise), so an
adapter on one of them adapts its rows of the fused layer. Rank and alpha are read per module; a module
without an alpha has alpha = rank (scale 1), as PEFT files of the reference scripts are saved. Reading is
strict: a key that lands on no module is an error listing the leftovers, and LoRAs for other model families
are refused by name where their keys or sizes show them (an attention-only Sana-600M LoRA has PixArt-XL's
names and sizes: nothing tells it apart). Non-float, non-finite and ill-shaped tensors are refused at read.

The tensors are read with the engine's own safe readers (``open_checkpoint``): peft reads only its own layout
and names modules as the model it is attached to, so it can neither read the kohya/LyCORIS layouts nor map
diffusers names onto our fused layers. A PEFT adapter's ``adapter_config.json`` (in the adapter's folder,
beside its ``adapter_model.safetensors``/``.bin`` or diffusers' ``pytorch_lora_weights.safetensors``, the file
our LoRA trainer writes; never beside a file of another name) is read with peft itself: its
``lora_alpha``, per-module ``alpha_pattern`` and ``use_rslora`` set the scales of files that carry no alpha (the
reference's scripts keep peft's default alpha, 8, whatever the rank).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from functools import lru_cache
from pathlib import Path

import torch

from ..checkpoints.files import TensorSource, read_json
from ..checkpoints.layouts import KeyTable, Rule
from ..checkpoints.loading import as_source
from ..errors import CheckpointError
from .lora_families import refuse_other_families
from .transformer_config import DIFFUSERS_TABLE

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"  # a PEFT adapter's settings, beside its adapter_model.safetensors
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' save_lora_weights name, one adapter a folder
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin", DIFFUSERS_LORA_FILE)
# (module name as the file names it, rank) -> alpha / rank, from a PEFT adapter_config.json
Scaling = Callable[[str, int], float]


class AdapterKind(Enum):
    """How an adapter builds its weight difference ΔW [out, in]."""

    LORA = "LoRA"  # ΔW = up @ down * alpha / rank (Hu et al. 2021)
    LOHA = "LoHa"  # ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) * alpha / rank (LyCORIS, Hyeon-Woo et al. 2022)
    LOKR = "LoKr"  # ΔW = w1 ⊗ w2 (Kronecker), factored halves scaled by alpha / rank (LyCORIS)


class Naming(Enum):
    """How a LoRA file names the modules it adapts."""

    PEFT = "PEFT/diffusers (transformer.*)"
    REFERENCE_PEFT = "reference PEFT (base_model.model.*, no alpha)"
    KOHYA = "kohya/OneTrainer (underscore-joined module paths)"
    COMFYUI = "ComfyUI (diffusion_model.*)"
    BARE = "bare module names"


# (prefix, naming), longest first: a module name's prefix says how the file names modules.
_PREFIXES: tuple[tuple[str, Naming], ...] = (
    ("unet.base_model.model.", Naming.REFERENCE_PEFT),
    ("base_model.model.", Naming.REFERENCE_PEFT),
    ("transformer.", Naming.PEFT),
    ("diffusion_model.", Naming.COMFYUI),
    ("lora_transformer_", Naming.KOHYA),
    ("lora_unet_", Naming.KOHYA),
    ("", Naming.BARE),
)

# The tensors of one adapter: key suffix -> (kind, role). ``alpha`` belongs to every kind.
_ROLES: dict[str, tuple[AdapterKind | None, str]] = {
    "lora_A.weight": (AdapterKind.LORA, "down"),
    "lora_B.weight": (AdapterKind.LORA, "up"),
    "lora_down.weight": (AdapterKind.LORA, "down"),
    "lora_up.weight": (AdapterKind.LORA, "up"),
    "hada_w1_a": (AdapterKind.LOHA, "w1_a"),
    "hada_w1_b": (AdapterKind.LOHA, "w1_b"),
    "hada_w2_a": (AdapterKind.LOHA, "w2_a"),
    "hada_w2_b": (AdapterKind.LOHA, "w2_b"),
    "lokr_w1": (AdapterKind.LOKR, "w1"),
    "lokr_w1_a": (AdapterKind.LOKR, "w1_a"),
    "lokr_w1_b": (AdapterKind.LOKR, "w1_b"),
    "lokr_w2": (AdapterKind.LOKR, "w2"),
    "lokr_w2_a": (AdapterKind.LOKR, "w2_a"),
    "lokr_w2_b": (AdapterKind.LOKR, "w2_b"),
    "alpha": (None, "alpha"),
}
_NEEDED: dict[AdapterKind, tuple[frozenset[str], ...]] = {  # any one of these role sets makes a whole adapter
    AdapterKind.LORA: (frozenset({"down", "up"}),),
    AdapterKind.LOHA: (frozenset({"w1_a", "w1_b", "w2_a", "w2_b"}),),
    AdapterKind.LOKR: tuple(
        frozenset({*w1, *w2}) for w1 in (("w1",), ("w1_a", "w1_b")) for w2 in (("w2",), ("w2_a", "w2_b"))
    ),
}


@dataclass(frozen=True)
class AdapterPart:
    """One adapter of a file, on one of our modules or on one part of a fused one (diffusers' ``to_k`` of our
    ``qkv``: part 1 of 3, rows [1/3, 2/3) of its output)."""

    source: str  # the module as the file names it, for messages
    kind: AdapterKind
    tensors: Mapping[str, torch.Tensor]  # role -> tensor as stored (fp32)
    scale: float  # alpha / rank, or 1 for a LoKr with no factored half
    rank: int  # 0 for a LoKr whose halves are both full (no low-rank factor)
    part: int = 0
    parts: int = 1


@dataclass(frozen=True)
class Lora:
    """A LoRA file read strictly: its adapters by our module name (reference names, e.g. ``blocks.3.attn.qkv``)."""

    name: str
    naming: Naming
    targets: Mapping[str, tuple[AdapterPart, ...]]

    @property
    def kinds(self) -> list[str]:
        """The adapter kinds the file holds, by name (``LoRA``, ``LoHa``, ``LoKr``), sorted."""
        return sorted({p.kind.value for parts in self.targets.values() for p in parts})

    def describe(self) -> str:
        """One line for logs and node outputs: kinds, layout, number of adapted modules and the rank range."""
        ranks = sorted({p.rank for parts in self.targets.values() for p in parts if p.rank})
        rank = f", rank {ranks[0]}" + (f" to {ranks[-1]}" if len(ranks) > 1 else "") if ranks else ""
        modules = f"{len(self.targets)} module{'s' * (len(self.targets) != 1)}"
        return f"{'/'.join(self.kinds)} in the {self.naming.value} layout on {modules}{rank}"


# Our module names (reference layout) as rules onto themselves, for files that use them.
_REFERENCE_TABLE = KeyTable([Rule((ours,), ours) for ours, _ in DIFFUSERS_TABLE.names()])


@lru_cache(maxsize=1)
def _underscored() -> tuple[tuple[re.Pattern[str], str], ...]:
    """(regex of a module path with its dots as underscores, the dotted template) for every diffusers and
    reference module name: kohya-style names are turned back into dotted paths through these."""
    templates = {t for ours, theirs in DIFFUSERS_TABLE.names() for t in (ours, *theirs)}
    found = []
    for template in sorted(templates, key=len, reverse=True):
        body = re.escape(template.replace(".", "_")).replace(r"\{i\}", r"(?P<i>\d+)")
        found.append((re.compile(f"^{body}$"), template))
    return tuple(found)


def _locate(name: str, naming: Naming) -> tuple[str, int, int] | None:
    """Our module, part and part count for a module name of the file (prefix removed), or None."""
    if naming is Naming.KOHYA:
        dotted = next((t.format(**m.groupdict()) for p, t in _underscored() if (m := p.match(name))), None)
        if dotted is None:
            return None
        name = dotted
    return _REFERENCE_TABLE.locate(name) or DIFFUSERS_TABLE.locate(name)


def _split(key: str) -> tuple[str, str] | None:
    """``<module>.<role suffix>`` -> (module, suffix), or None when the key ends in no adapter tensor name."""
    for suffix in _ROLES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    return None


def _naming(module: str) -> tuple[str, Naming]:
    return next((p, n) for p, n in _PREFIXES if module.startswith(p))


def open_lora(lora: str | Path | TensorSource | Mapping[str, torch.Tensor]) -> tuple[TensorSource, Scaling | None]:
    """The LoRA's tensors, and the scaling its PEFT ``adapter_config.json`` sets, if it has one."""
    if not isinstance(lora, (str, Path)):
        return as_source(lora), None
    path = Path(lora)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        found = next((folder / name for name in ADAPTER_FILES if (folder / name).is_file()), None)
        if found is None:
            raise CheckpointError(f"{path}: a folder without {' or '.join(ADAPTER_FILES)}; expected a LoRA")
        path = found
    config = folder / ADAPTER_CONFIG
    # only an adapter's own file (a name used for one adapter a folder) takes its folder's settings: in ComfyUI's
    # flat loras/ folder a config beside a file of another name belongs to some other adapter
    peft_layout = path.name in ADAPTER_FILES
    return as_source(path), (peft_scaling(config) if peft_layout and config.is_file() else None)


def holds_adapters(lora: str | Path) -> bool:
    """Whether any tensor of the file or folder ``lora`` is named as an adapter's (lora_A/lora_B, lora_down/lora_up,
    hada_*, lokr_*, alpha): False for a model given as a LoRA, or a folder without an adapter file."""
    try:
        source, _ = open_lora(lora)
    except CheckpointError:
        return False
    return any(_split(key) is not None for key in source.shapes)


def peft_scaling(config_file: Path) -> Scaling:
    """alpha / rank per module from a PEFT ``adapter_config.json``, read by peft (alpha / sqrt(rank) with rsLoRA)."""
    try:
        from peft import LoraConfig
        from peft.utils.other import get_pattern_key
    except ImportError as err:
        raise CheckpointError(
            f"{config_file}: reading a PEFT adapter's settings needs the peft package ({err}): pip install peft"
        ) from err
    settings = read_json(config_file)
    kind, alpha = settings.get("peft_type"), settings.get("lora_alpha", 8)
    if kind != "LORA":
        raise CheckpointError(f"{config_file}: expected a PEFT LoRA configuration (peft_type LORA), found {kind!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
        raise CheckpointError(f"{config_file}: lora_alpha should be a positive number, found {alpha!r}")
    try:
        config = LoraConfig.from_pretrained(str(config_file.parent))
    except (ValueError, TypeError, OSError) as err:
        raise CheckpointError(f"{config_file}: not a PEFT LoRA configuration ({err})") from err
    patterns = dict(config.alpha_pattern or {})

    def scaling(module: str, rank: int) -> float:
        alpha = patterns.get(get_pattern_key(list(patterns), module), config.lora_alpha)
        return alpha / (math.sqrt(rank) if config.use_rslora else rank)

    log.info("%s: lora_alpha %s%s", config_file, config.lora_alpha, ", rsLoRA" if config.use_rslora else "")
    return scaling


def read_lora(lora: str | Path | TensorSource | Mapping[str, torch.Tensor]) -> Lora:
    """Read a PixArt LoRA (any layout above) from a file, a PEFT adapter folder, or a state dict, strictly.

    Raises ``CheckpointError`` for a LoRA of another family, an unsupported adapter variant, keys that land on
    no module of the PixArt transformer (listed), or incomplete or inconsistent adapters. Whether the modules
    exist in a given model, with the sizes the adapters expect, is checked when applying (``models/lora.py``).
    """
    source, scaling = open_lora(lora)
    if not source.shapes:
        raise CheckpointError(f"{source.origin}: holds no tensors; expected a LoRA")
    not_float = next(((k, d) for k, d in source.dtypes.items() if not d.is_floating_point), None)
    if not_float is not None:
        raise CheckpointError(
            f"{source.origin}: {not_float[0]!r} holds {not_float[1]}; expected floating-point adapter tensors"
        )
    refuse_other_families(source)
    modules: dict[str, dict[str, str]] = {}
    leftovers: list[str] = []
    for key in source.shapes:
        split = _split(key)
        if split is None:
            leftovers.append(key)
            continue
        modules.setdefault(split[0], {})[split[1]] = key
    namings = {_naming(m)[1] for m in modules}
    if len(namings) > 1:
        raise CheckpointError(
            f"{source.origin}: mixes module namings ({', '.join(sorted(n.value for n in namings))}); "
            f"expected one LoRA layout"
        )
    naming = namings.pop() if namings else Naming.BARE
    targets: dict[str, list[AdapterPart]] = {}
    for module, found in modules.items():
        prefix, _ = _naming(module)
        located = _locate(module[len(prefix) :], naming)
        if located is None:
            leftovers.extend(found.values())
            continue
        ours, part, parts = located
        adapter = _adapter(source, module, found, part, parts)
        if scaling is not None and "alpha" not in found and adapter.kind is AdapterKind.LORA:
            adapter = replace(adapter, scale=scaling(module[len(prefix) :], adapter.rank))
        targets.setdefault(ours, []).append(adapter)
    if leftovers:
        shown = ", ".join(sorted(leftovers)[:8]) + (f" and {len(leftovers) - 8} more" if len(leftovers) > 8 else "")
        raise CheckpointError(
            f"{source.origin}: {len(leftovers)} of its {len(source)} tensors land on no module of a PixArt "
            f"transformer: {shown}; expected adapter tensors (lora_A/lora_B, lora_down/lora_up, hada_*, lokr_*, "
            f"alpha) of PixArt modules in diffusers or reference names"
        )
    for ours, found_parts in targets.items():
        seen = [p.part for p in found_parts]
        if len(seen) != len(set(seen)):
            sources = [p.source for p in found_parts]
            raise CheckpointError(f"{source.origin}: several adapters for {ours!r} ({sources}); expected one")
    no_alpha = not any(k.endswith(".alpha") for k in source.shapes)
    if scaling is None and no_alpha and naming in (Naming.PEFT, Naming.REFERENCE_PEFT, Naming.BARE):
        log.warning(
            "%s: no alpha in the file and no %s beside it: alpha = rank (scale 1) is assumed; keep a PEFT "
            "adapter's %s beside its weights so its lora_alpha is read",
            source.origin,
            ADAPTER_CONFIG,
            ADAPTER_CONFIG,
        )
    return Lora(source.origin, naming, {k: tuple(sorted(v, key=lambda p: p.part)) for k, v in targets.items()})


def _adapter(source: TensorSource, module: str, found: Mapping[str, str], part: int, parts: int) -> AdapterPart:
    roles = {_ROLES[suffix][1]: source[key].float() for suffix, key in found.items()}
    if len(roles) != len(found):
        raise CheckpointError(
            f"{source.origin}: {module!r} holds one adapter tensor twice, named two ways: {sorted(found)}"
        )
    kinds = {_ROLES[suffix][0] for suffix in found} - {None}
    if len(kinds) != 1:
        what = "only an alpha" if not kinds else f"tensors of several kinds ({', '.join(k.value for k in kinds)})"
        raise CheckpointError(f"{source.origin}: {module!r} holds {what}: {sorted(found)}")
    kind = kinds.pop()
    if not any(needed <= roles.keys() for needed in _NEEDED[kind]):
        raise CheckpointError(
            f"{source.origin}: the {kind.value} of {module!r} is incomplete: found {sorted(found)}, expected "
            f"{' or '.join(str(sorted(n)) for n in _NEEDED[kind])} (+ alpha)"
        )
    keys = {_ROLES[suffix][1]: key for suffix, key in found.items()}  # the file's own names (lora_A, not down)
    for role, tensor in roles.items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{source.origin}: {keys[role]!r} holds NaN or infinite values")
        if role != "alpha" and tensor.dim() < 2:
            raise CheckpointError(
                f"{source.origin}: {role} of {module!r} should be a matrix, found shape {list(tensor.shape)}"
            )
    alpha_tensor = roles.pop("alpha", None)
    if alpha_tensor is not None and alpha_tensor.numel() != 1:
        raise CheckpointError(f"{source.origin}: alpha of {module!r} should be one number, found {alpha_tensor.shape}")
    alpha = None if alpha_tensor is None else alpha_tensor.item()
    _check_factors(source.origin, module, kind, roles)
    rank, scale = _rank_and_scale(source.origin, module, kind, roles, alpha)
    return AdapterPart(module, kind, roles, scale, rank, part, parts)


def _check_factors(origin: str, module: str, kind: AdapterKind, roles: Mapping[str, torch.Tensor]) -> None:
    """Refuse factors whose shapes cannot multiply: every product an adapter forms, checked before any is."""
    shapes = {role: list(t.shape) for role, t in roles.items()}
    pairs = {AdapterKind.LORA: [("up", "down")], AdapterKind.LOHA: [("w1_a", "w1_b"), ("w2_a", "w2_b")]}.get(
        kind, [("w1_a", "w1_b"), ("w2_a", "w2_b")]
    )
    for left, right in pairs:
        if left in shapes and (shapes[left][1] != shapes[right][0] or shapes[right][0] == 0):
            raise CheckpointError(
                f"{origin}: the {kind.value} of {module!r} has {left} {shapes[left]} and {right} {shapes[right]}; "
                f"expected a shared, non-zero rank"
            )
    if kind is AdapterKind.LOHA:
        first = (shapes["w1_a"][0], math.prod(shapes["w1_b"][1:]))
        second = (shapes["w2_a"][0], math.prod(shapes["w2_b"][1:]))
        if first != second:
            raise CheckpointError(
                f"{origin}: the LoHa of {module!r} multiplies a {first[1]} -> {first[0]} product by a "
                f"{second[1]} -> {second[0]} one; expected the same shape"
            )


def _rank_and_scale(
    origin: str, module: str, kind: AdapterKind, roles: Mapping[str, torch.Tensor], alpha: float | None
) -> tuple[int, float]:
    """The rank and alpha / rank of one adapter; alpha = rank where the file has none (scale 1)."""
    if kind is AdapterKind.LORA:
        rank = roles["down"].shape[0]
    elif kind is AdapterKind.LOHA:
        rank = roles["w1_b"].shape[0]
    else:  # LyCORIS scales a LoKr by alpha / rank only when one half is factored (the factor's rank)
        factored = roles.get("w2_b", roles.get("w1_b"))
        if factored is None or alpha is None:
            return (0 if factored is None else factored.shape[0]), 1.0
        rank = factored.shape[0]
    return rank, (rank if alpha is None else alpha) / rank
