"""Key layouts: the declarative tables between diffusers-style names and the reference names.

The engine's modules are named like the reference checkpoints (REFERENCE.md §1, §4), so reference
files load as they are. A diffusers transformer goes through ``DIFFUSERS_TRANSFORMER`` and a
diffusers-style ControlNet adapter through ``CONTROLNET_ADAPTER``: each rule maps one or more of
their tensors (concatenated on dim 0, for the fused ``qkv`` and ``kv_linear``) to one reference
tensor, and back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .checkpoint import Shape, TensorSource
from .errors import CheckpointError


@dataclass(frozen=True)
class Rule:
    """Diffusers module names (concatenated on dim 0, in order) -> one reference module name."""

    theirs: tuple[str, ...]
    ours: str


# Inside one transformer block (the same rules serve the ControlNet's copied blocks).
BLOCK_RULES: tuple[Rule, ...] = (
    Rule(("scale_shift_table",), "scale_shift_table"),
    Rule(("attn1.to_q", "attn1.to_k", "attn1.to_v"), "attn.qkv"),
    Rule(("attn1.to_out.0",), "attn.proj"),
    Rule(("attn2.to_q",), "cross_attn.q_linear"),
    Rule(("attn2.to_k", "attn2.to_v"), "cross_attn.kv_linear"),
    Rule(("attn2.to_out.0",), "cross_attn.proj"),
    Rule(("ff.net.0.proj",), "mlp.fc1"),
    Rule(("ff.net.2",), "mlp.fc2"),
)


def prefixed(rules: Sequence[Rule], theirs: str, ours: str) -> tuple[Rule, ...]:
    """The same rules one level down, e.g. inside ``transformer_blocks.{i}.`` / ``blocks.{i}.``."""
    return tuple(Rule(tuple(theirs + t for t in r.theirs), ours + r.ours) for r in rules)


DIFFUSERS_TRANSFORMER: tuple[Rule, ...] = (
    Rule(("pos_embed.proj",), "x_embedder.proj"),
    Rule(("caption_projection.linear_1",), "y_embedder.y_proj.fc1"),
    Rule(("caption_projection.linear_2",), "y_embedder.y_proj.fc2"),
    Rule(("adaln_single.emb.timestep_embedder.linear_1",), "t_embedder.mlp.0"),
    Rule(("adaln_single.emb.timestep_embedder.linear_2",), "t_embedder.mlp.2"),
    Rule(("adaln_single.emb.resolution_embedder.linear_1",), "csize_embedder.mlp.0"),
    Rule(("adaln_single.emb.resolution_embedder.linear_2",), "csize_embedder.mlp.2"),
    Rule(("adaln_single.emb.aspect_ratio_embedder.linear_1",), "ar_embedder.mlp.0"),
    Rule(("adaln_single.emb.aspect_ratio_embedder.linear_2",), "ar_embedder.mlp.2"),
    Rule(("adaln_single.linear",), "t_block.1"),
    Rule(("proj_out",), "final_layer.linear"),
    Rule(("scale_shift_table",), "final_layer.scale_shift_table"),
    *prefixed(BLOCK_RULES, "transformer_blocks.{i}.", "blocks.{i}."),
)


def _pattern(name: str) -> re.Pattern[str]:
    """``blocks.{i}.attn.qkv`` -> a regex that also matches ``.weight``/``.bias`` after it."""
    return re.compile("^" + re.escape(name).replace(r"\{i\}", r"(\d+)") + r"(\..+)?$")


@dataclass(frozen=True)
class _Compiled:
    rule: Rule
    theirs: tuple[re.Pattern[str], ...]
    ours: re.Pattern[str]


class KeyTable:
    """Renames a whole state dict between two layouts with a list of ``Rule``s."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = [_Compiled(r, tuple(_pattern(t) for t in r.theirs), _pattern(r.ours)) for r in rules]

    def plan_to_ours(self, their_keys: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """Our key -> the keys of theirs it is made of. Keys no rule knows keep their name."""
        parts: dict[tuple[int, str, str], dict[int, str]] = {}
        plan: dict[str, tuple[str, ...]] = {}
        for key in their_keys:
            hit = self._match_theirs(key)
            if hit is None:
                plan[key] = (key,)
                continue
            rule_index, part, index, suffix = hit
            parts.setdefault((rule_index, index, suffix), {})[part] = key
        for (rule_index, index, suffix), found in parts.items():
            rule = self._rules[rule_index].rule
            ours = rule.ours.replace("{i}", index) + suffix
            if len(found) != len(rule.theirs):
                names = [t.replace("{i}", index) + suffix for t in rule.theirs]
                missing = [n for n in names if n not in found.values()]
                raise CheckpointError(
                    f"cannot build {ours!r}: it is the concatenation of {names}, and {missing} "
                    f"are missing from the checkpoint"
                )
            plan[ours] = tuple(found[p] for p in range(len(rule.theirs)))
        return plan

    def _match_theirs(self, key: str) -> tuple[int, int, str, str] | None:
        for rule_index, compiled in enumerate(self._rules):
            for part, pattern in enumerate(compiled.theirs):
                m = pattern.match(key)
                if m:
                    index = m.group(1) if "{i}" in compiled.rule.theirs[part] else ""
                    return rule_index, part, index, m.groups()[-1] or ""
        return None

    def to_theirs(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our layout -> theirs, splitting fused tensors into equal parts on dim 0."""
        out: dict[str, torch.Tensor] = {}
        for key, tensor in state_dict.items():
            for compiled in self._rules:
                m = compiled.ours.match(key)
                if m:
                    index = m.group(1) if "{i}" in compiled.rule.ours else ""
                    suffix = m.groups()[-1] or ""
                    names = [t.replace("{i}", index) + suffix for t in compiled.rule.theirs]
                    for name, piece in zip(names, tensor.chunk(len(names), dim=0), strict=True):
                        out[name] = piece.contiguous()
                    break
            else:
                out[key] = tensor
        return out


class RenamedSource(TensorSource):
    """A source seen through a ``KeyTable``: our names, fused tensors concatenated on read."""

    def __init__(self, inner: TensorSource, table: KeyTable) -> None:
        self._plan = table.plan_to_ours(list(inner.shapes))
        shapes: dict[str, Shape] = {}
        for ours, theirs in self._plan.items():
            first = inner.shapes[theirs[0]]
            if any(inner.shapes[t][1:] != first[1:] for t in theirs):
                found = {t: inner.shapes[t] for t in theirs}
                raise CheckpointError(f"cannot concatenate {found} into {ours!r}: their shapes differ")
            shapes[ours] = (sum(inner.shapes[t][0] for t in theirs), *first[1:])
        super().__init__(shapes, {k: inner.dtypes[v[0]] for k, v in self._plan.items()}, inner.origin, inner.metadata)
        self._inner = inner

    def _read(self, key: str) -> torch.Tensor:
        theirs = self._plan[key]
        if len(theirs) == 1:
            return self._inner[theirs[0]]
        return torch.cat([self._inner[t] for t in theirs], dim=0)

    def read_into(self, key: str, out: torch.Tensor) -> None:
        start = 0
        for part in self._plan[key]:
            rows = self._inner.shapes[part][0]
            self._inner.read_into(part, out[start : start + rows])
            start += rows


DIFFUSERS_TABLE = KeyTable(DIFFUSERS_TRANSFORMER)


# Reference tensors diffusers has no place for; ``to_diffusers`` keeps them under their own names.
REFERENCE_ONLY = ("pos_embed", "y_embedder.y_embedding")


def to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reference-layout transformer state dict in diffusers names, losing nothing.

    ``REFERENCE_ONLY`` keys pass through unchanged, so the way back restores the original exactly;
    drop them before handing the result to diffusers itself.
    """
    return DIFFUSERS_TABLE.to_theirs(state_dict)


# The diffusers-style ControlNet adapter (REFERENCE.md §4): ``before_proj`` exists on block 0 only.
CONTROLNET_ADAPTER: tuple[Rule, ...] = (
    Rule(("controlnet_blocks.{i}.before_proj",), "controlnet.{i}.before_proj"),
    Rule(("controlnet_blocks.{i}.after_proj",), "controlnet.{i}.after_proj"),
    *prefixed(BLOCK_RULES, "controlnet_blocks.{i}.transformer_block.", "controlnet.{i}.copied_block."),
)

ADAPTER_TABLE = KeyTable(CONTROLNET_ADAPTER)


def to_adapter(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reference-layout ControlNet state dict (``controlnet.*``) in the adapter's names, losing nothing."""
    return ADAPTER_TABLE.to_theirs(state_dict)
