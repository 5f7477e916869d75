"""Key layouts: declarative tables between another layout's names and ours.

The engine's modules are named like the reference checkpoints (docs/REFERENCE.md §1, §4), so reference
files load as they are. A diffusers transformer goes through ``DIFFUSERS_TRANSFORMER`` and a
diffusers-style ControlNet adapter through ``CONTROLNET_ADAPTER``: each rule maps one or more of
their tensors (concatenated on dim 0, for the fused ``qkv`` and ``kv_linear``) to one reference
tensor, and back. The VAE's LDM table (vae/vae_config.py) is built from the same ``Rule``s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from ..errors import CheckpointError
from .sources import Shape, TensorSource


@dataclass(frozen=True)
class Rule:
    """Their module names (concatenated on dim 0, in order) -> one module name of ours.

    Names may hold index placeholders (``{i}``, ``{j}``...) shared by both sides. ``squeeze``: theirs
    stores the weight as a 1x1 convolution ``[out, in, 1, 1]``, ours as a linear layer ``[out, in]``.
    """

    theirs: tuple[str, ...]
    ours: str
    squeeze: bool = False


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
    return tuple(replace(r, theirs=tuple(theirs + t for t in r.theirs), ours=ours + r.ours) for r in rules)


_PLACEHOLDER = re.compile(r"\\\{(\w+)\\\}")


def _pattern(name: str) -> re.Pattern[str]:
    """``blocks.{i}.attn.qkv`` -> a regex that also matches ``.weight``/``.bias`` after it."""
    body = _PLACEHOLDER.sub(lambda m: f"(?P<{m.group(1)}>\\d+)", re.escape(name))
    return re.compile("^" + body + r"(?P<_suffix>\..+)?$")


def _squeezed(shape: Shape) -> Shape:
    """A 1x1 convolution's weight shape as a linear layer's; any other shape unchanged."""
    return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape


@dataclass(frozen=True)
class _Compiled:
    rule: Rule
    theirs: tuple[re.Pattern[str], ...]
    ours: re.Pattern[str]


class KeyTable:
    """Renames a whole state dict between two layouts with a list of ``Rule``s (first match wins)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = [_Compiled(r, tuple(_pattern(t) for t in r.theirs), _pattern(r.ours)) for r in rules]

    def plan_to_ours(self, their_keys: Sequence[str]) -> dict[str, Rule]:
        """Our key -> the rule, with concrete names, that builds it. Keys no rule knows keep their name."""
        parts: dict[tuple[int, tuple[tuple[str, str], ...], str], dict[int, str]] = {}
        plan: dict[str, Rule] = {}
        for key in their_keys:
            hit = self._match_theirs(key)
            if hit is None:
                plan[key] = Rule((key,), key)
                continue
            rule_index, part, indices, suffix = hit
            parts.setdefault((rule_index, indices, suffix), {})[part] = key
        for (rule_index, indices, suffix), found in parts.items():
            rule = self._rules[rule_index].rule
            ours = rule.ours.format(**dict(indices)) + suffix
            if len(found) != len(rule.theirs):
                names = [t.format(**dict(indices)) + suffix for t in rule.theirs]
                missing = [n for n in names if n not in found.values()]
                raise CheckpointError(
                    f"cannot build {ours!r}: it is the concatenation of {names}, and {missing} "
                    f"are missing from the checkpoint"
                )
            plan[ours] = Rule(tuple(found[p] for p in range(len(rule.theirs))), ours, rule.squeeze)
        return plan

    def locate(self, name: str) -> tuple[str, int, int] | None:
        """Where one of their whole module names lands in ours: (our name, its part, how many parts), or None if no
        rule names it. A fused module of ours (``attn.qkv``) is ``parts`` of theirs stacked on dim 0, in order."""
        hit = self._match_theirs(name)
        if hit is None or hit[3]:  # a suffix: a tensor or sub-module of a named module, not the module itself
            return None
        rule_index, part, indices, _ = hit
        rule = self._rules[rule_index].rule
        return rule.ours.format(**dict(indices)), part, len(rule.theirs)

    def names(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Every rule as (our name, their names), with their index placeholders (``{i}``)."""
        return tuple((c.rule.ours, c.rule.theirs) for c in self._rules)

    def _match_theirs(self, key: str) -> tuple[int, int, tuple[tuple[str, str], ...], str] | None:
        for rule_index, compiled in enumerate(self._rules):
            for part, pattern in enumerate(compiled.theirs):
                m = pattern.match(key)
                if m:
                    groups = m.groupdict()
                    suffix = groups.pop("_suffix") or ""
                    return rule_index, part, tuple(sorted(groups.items())), suffix
        return None

    def to_theirs(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our layout -> theirs, splitting fused tensors into equal parts on dim 0."""
        out: dict[str, torch.Tensor] = {}
        for key, tensor in state_dict.items():
            for compiled in self._rules:
                m = compiled.ours.match(key)
                if m:
                    groups = m.groupdict()
                    suffix = groups.pop("_suffix") or ""
                    names = [t.format(**groups) + suffix for t in compiled.rule.theirs]
                    if compiled.rule.squeeze and tensor.ndim == 2:
                        tensor = tensor[:, :, None, None]
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
        for ours, rule in self._plan.items():
            parts = [_squeezed(inner.shapes[t]) if rule.squeeze else inner.shapes[t] for t in rule.theirs]
            if len(parts) == 1:
                shapes[ours] = parts[0]
                continue
            if any(p[1:] != parts[0][1:] for p in parts):
                found = {t: inner.shapes[t] for t in rule.theirs}
                raise CheckpointError(f"cannot concatenate {found} into {ours!r}: their shapes differ")
            shapes[ours] = (sum(p[0] for p in parts), *parts[0][1:])
        dtypes = {k: inner.dtypes[rule.theirs[0]] for k, rule in self._plan.items()}
        super().__init__(shapes, dtypes, inner.origin, inner.metadata)
        self.path = inner.path
        self._inner = inner

    def _read(self, key: str) -> torch.Tensor:
        theirs = self._plan[key].theirs
        if len(theirs) == 1:
            return self._inner[theirs[0]].reshape(self.shapes[key])
        return torch.cat([self._inner[t] for t in theirs], dim=0).reshape(self.shapes[key])

    def read_into(self, key: str, out: torch.Tensor) -> None:
        theirs = self._plan[key].theirs
        if len(theirs) == 1:
            self._inner.read_into(theirs[0], out.view(self._inner.shapes[theirs[0]]))
            return
        start = 0
        for part in theirs:
            stored = self._inner.shapes[part]
            self._inner.read_into(part, out[start : start + stored[0]].view(stored))
            start += stored[0]

    def mapped(self, key: str) -> torch.Tensor | None:
        theirs = self._plan[key].theirs
        tensor = self._inner.mapped(theirs[0]) if len(theirs) == 1 else None  # fused tensors need a copy
        return None if tensor is None else tensor.view(self.shapes[key])
