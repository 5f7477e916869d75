"""The engine's own error types: each message says what was expected and what was found."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager


class PixArtDeltaError(Exception):
    """Base class for every error the engine raises on purpose."""


class CheckpointError(PixArtDeltaError):
    """A file or state dict that cannot be read, recognised or loaded."""


# Where the engine says to give a model file of each kind, by the pipeline's argument that takes it.
GIVEN_AS = {
    "transformer": "the transformer",
    "controlnet": "the ControlNet",
    "t5": "the T5 encoder",
    "vae": "the VAE",
    "loras": "a LoRA",
}


def give_as(kind: str, instead: Mapping[str, str] | None = None) -> str:
    """Where to give a model file of ``kind`` (a key of ``GIVEN_AS``): ``instead``'s words for it (a surface's: the
    command line's option, a node), else the engine's ("give it as the VAE")."""
    return (instead or {}).get(kind) or f"give it as {GIVEN_AS[kind]}"


class OtherKindError(CheckpointError):
    """A model file of another kind than the one wanted, which the pack takes elsewhere: ``found`` says what it is,
    ``kind`` names where it goes (a key of ``GIVEN_AS``), and the message adds ``give_as``'s words for it."""

    def __init__(self, found: str, kind: str, instead: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{found} ({give_as(kind, instead)})")
        self.found, self.kind, self.instead = found, kind, instead


class InputError(PixArtDeltaError):
    """An argument outside what the engine accepts (a size, a step count, a strength...)."""


class QuantizationError(PixArtDeltaError):
    """Quantization asked for but impossible here: bitsandbytes missing, too old, or unable to run on the device."""


@contextmanager
def given_as(what: str | None, instead: Mapping[str, str] | None = None) -> Iterator[None]:
    """Lead an error of ours raised inside with ``what`` (how the file it is about was given: a command line's
    option), keeping its type; None leaves it as it is. A file of another kind (``OtherKindError``) is told where
    to go in ``instead``'s words, by kind (``give_as``; None: the words it came with)."""
    try:
        yield
    except OtherKindError as err:
        if what is None and instead is None:
            raise
        lead = f"{what} " if what is not None else ""
        raise OtherKindError(f"{lead}{err.found}", err.kind, err.instead if instead is None else instead) from None
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
