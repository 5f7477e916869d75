"""The command line's value types: argparse ``type=`` functions that refuse a value in the pack's words, saying what
was expected and what was found (argparse's own message names the function: "invalid _positive value: '2.5'")."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from .errors import InputError


def whole_number(of: str = "", least: int = 1, most: int | None = None) -> Callable[[str], int]:
    """A type for whole numbers (``of`` what, e.g. "pixels") from ``least`` to ``most`` (no upper bound: None)."""
    positive = least == 1 and most is None
    expected = ("a positive whole number" if positive else "a whole number") + (f" of {of}" if of else "")
    if not positive:
        expected += f" ({least} to {most})" if most is not None else f" ({least} or more)"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"expected {expected}, found {text or 'nothing'}")
        return value

    return parse


def lora_spec(text: str) -> tuple[Path, float]:
    """``FILE`` or ``FILE:STRENGTH`` -> (path, strength). The text after the last colon is a strength unless the
    whole text names a file that exists or that text holds a path separator (``C:\\loras\\x.safetensors``)."""
    from .models.lora import MAX_STRENGTH, check_strength  # torch: imported when a --lora is given, not at start-up

    path, colon, tail = text.rpartition(":")
    if not colon or "/" in tail or "\\" in tail or Path(text).exists():
        return Path(text), 1.0
    try:
        if "_" in tail:  # float() reads 1_0 as 10: a typo, not a strength
            raise ValueError(tail)
        return Path(path), check_strength(float(tail))
    except (ValueError, InputError) as err:
        raise argparse.ArgumentTypeError(
            f"{text}: the strength after the last colon should be a number from {-MAX_STRENGTH:g} to "
            f"{MAX_STRENGTH:g}, found {tail!r} (and {text} is no file)"
        ) from err
