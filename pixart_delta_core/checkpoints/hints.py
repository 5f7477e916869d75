"""Detection hints meeting what a checkpoint says: the one rule every model's detection follows.

A hint gives a config value that a checkpoint may not say (a PixArt-Σ 256 px file has no ``pos_embed``, a
toy transformer's width is not 72 x its heads). What the checkpoint says comes first: its tensor shapes, its
safetensors metadata, its diffusers folder's config.json. A hint equal to that, or for a value the checkpoint
does not say, is taken; a hint that contradicts it is refused while the checkpoint is detected, before any
weight is read. What detection only infers (PixArt's 72-wide heads, micro-conditions meaning 1024 px) is no
statement of the file: a hint overrides it. A hint of a name the model does not take (a typo such as
``scaling_factr``) is refused too (``check_names``): dropped, it would leave the file's value without a word.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping
from typing import Any

from ..errors import CheckpointError


def first_given(values: Mapping[str, Any], *names: str) -> Any:
    """The value of the first of ``names`` that ``values`` gives (a null, as in a config.json, gives nothing)."""
    return next((values[name] for name in names if values.get(name) is not None), None)


def settle(
    origin: str,
    name: str,
    said: Any,
    where: str,
    hint: Any,
    given_as: str,
    shown: Callable[[Any], str] = repr,
    give: Callable[[Any], str] | None = None,
) -> Any:
    """What the checkpoint ``said`` (read from ``where``), else the ``hint``; None when neither gives ``name``.

    Raises CheckpointError when both give it and differ, naming both values (as ``shown``) and ``given_as`` (how the
    hint is given on each surface), and the value to give (as ``give``, default ``shown``: in each unit the surfaces
    take it in, where they differ).
    """
    if said is None:
        return hint
    if hint is None or hint == said:
        return said
    raise CheckpointError(
        f"{origin}: {where} says {name} {shown(said)}, but the hint gives {shown(hint)} ({given_as}): a hint is "
        f"only for what a checkpoint does not say; leave it out, or give {(give or shown)(said)}"
    )


def check_names(origin: str, hints: Mapping[Any, Any], accepted: Collection[str], model: str) -> None:
    """Raise CheckpointError when ``hints`` has a name that ``model`` (e.g. 'a PixArt transformer') does not take,
    naming each such name, the closest accepted one, and every accepted one; the one check each model's hints pass.
    """
    unknown = [name for name in hints if name not in accepted]
    if not unknown:
        return
    named = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), accepted, n=1)
        named.append(f"{name!r:.80}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = "s" if len(unknown) > 1 else ""
    raise CheckpointError(
        f"{origin}: unknown hint{plural} {', '.join(named)} for {model}; the hints it takes: "
        f"{', '.join(sorted(accepted))}"
    )
