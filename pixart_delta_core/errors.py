"""The engine's own error types: each message says what was expected and what was found."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class PixArtDeltaError(Exception):
    """Base class for every error the engine raises on purpose."""


class CheckpointError(PixArtDeltaError):
    """A file or state dict that cannot be read, recognised or loaded."""


class InputError(PixArtDeltaError):
    """An argument outside what the engine accepts (a size, a step count, a strength...)."""


class QuantizationError(PixArtDeltaError):
    """Quantization asked for but impossible here: bitsandbytes missing, too old, or unable to run on the device."""


@contextmanager
def given_as(what: str | None) -> Iterator[None]:
    """Lead an error of ours raised inside with ``what`` (how the file it is about was given: a command line's
    option), keeping its type; None leaves it as it is."""
    try:
        yield
    except PixArtDeltaError as err:
        if what is None:
            raise
        raise type(err)(f"{what} {err}") from None


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), to quote in one of ours."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def nearest_multiples(value: int, multiple: int, least: int = 1, most: int | None = None) -> str:
    """The multiples of ``multiple`` on either side of ``value`` that lie within ``least``..``most`` (no upper
    bound: None), as an error says them: "992 or 1008", or the one in bounds ("16")."""
    below = value - value % multiple
    near = [n for n in (below, below + multiple) if n >= least and (most is None or n <= most)]
    return " or ".join(map(str, near))
