"""The command line's value types: argparse ``type=`` functions that refuse a value in the pack's words, saying what
was expected and what was found (argparse's own message names the function: "invalid _positive value: '2.5'")."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from difflib import get_close_matches
from itertools import takewhile
from typing import Any, NoReturn

from .errors import nearest_multiples

WHOLE = re.compile("-?[0-9]+")  # a whole number as whole_number takes it: ASCII digits, an optional minus


def whole_number(of: str = "", least: int = 1, most: int | None = None, multiple_of: int = 1) -> Callable[[str], int]:
    """A type for whole numbers (``of`` what, e.g. "pixels") from ``least`` to ``most`` (no upper bound: None), each
    a multiple of ``multiple_of``, written in the digits 0-9 with an optional leading minus: ``int()`` alone takes
    other scripts' digits (``٣``, ``３``), underscores (``1_000``), a plus sign and spaces, none of which a value
    written back (a PNG's parameters, a log) would show as typed."""
    positive = least == 1 and most is None
    expected = ("a positive whole number" if positive else "a whole number") + (f" of {of}" if of else "")
    bounds = [] if positive else [f"{least} to {most}" if most is not None else f"{least} or more"]
    if multiple_of > 1:
        bounds.append(f"a multiple of {multiple_of}")
    expected += f" ({', '.join(bounds)})" if bounds else ""

    def parse(text: str) -> int:
        value = int(text) if WHOLE.fullmatch(text) else None
        if value is None or value < least or (most is not None and value > most):
            spelled = "" if value is not None else _spelled_otherwise(text)
            raise argparse.ArgumentTypeError(f"expected {expected}, found {text or 'nothing'}{spelled}")
        if value % multiple_of:
            nearest = nearest_multiples(value, multiple_of, least, most)
            raise argparse.ArgumentTypeError(f"expected {expected}, found {text} (nearest: {nearest})")
        return value

    return parse


def _spelled_otherwise(text: str) -> str:
    """What a refusal of ``text`` adds where ``int()`` reads it as a whole number that ``WHOLE`` does not take."""
    try:
        int(text)
    except ValueError:
        return ""
    return " (written otherwise than in the digits 0-9)"


def number_in(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """A type for real numbers from ``low`` to ``high``, ``low`` itself excluded when ``low_open`` (NaN refused)."""
    expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not (low < value if low_open else low <= value) or not value <= high:
            raise argparse.ArgumentTypeError(f"expected {expected}, found {text or 'nothing'}")
        return value

    return parse


def nonempty(expected: str, convert: Callable[[str], Any] = str) -> Callable[[str], Any]:
    """A type for a path (``expected`` what, e.g. "a file or folder"), ``convert``-ed (``Path``; ``str`` keeps the
    text as typed), refusing an empty one: ``Path("")`` is the current folder, so a later refusal would be about
    ".", a folder the user never named."""

    def parse(text: str) -> Any:
        if not text:
            raise argparse.ArgumentTypeError(f"expected {expected}, found an empty path")
        return convert(text)

    return parse


class Parser(argparse.ArgumentParser):
    """The command line's parser (its subcommands' too: argparse makes them of the same class). On a usage error
    a usage longer than a few lines (generate's is some twenty) is shortened to one line that points at --help,
    so the error line is not buried under it, and options it does not know are named with the nearest known
    one, even where a missing required option is the error argparse gives; exit status 2, as argparse's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.given: list[str] = []  # the words this parser was last given (a subcommand's: those after its name)

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self.given = list(sys.argv[1:] if args is None else args)  # for error()
        return super().parse_known_args(args, namespace)

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None) -> Any:
        """As argparse's, but words no option takes are reported by the subcommand they were given to (argparse
        leaves them to the top parser, whose usage does not show the subcommand's options)."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            parser = self._subcommand(parsed) or self
            parser.error(unrecognized(extra, parser.given, parser.option_names()))
        return parsed

    def option_names(self) -> list[str]:
        return [name for action in self._actions for name in action.option_strings]

    def _subcommand(self, parsed: argparse.Namespace) -> Parser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):  # argparse names no public type
                chosen = action.choices.get(getattr(parsed, action.dest, None))
                return chosen._subcommand(parsed) or chosen if isinstance(chosen, Parser) else None
        return None

    def error(self, message: str) -> NoReturn:
        if message.startswith("the following arguments are required"):  # a misspelt one is the likely cause
            names = self.option_names()
            unknown = [w for w in self.given if _is_option(w) and not any(n.startswith(_name(w)) for n in names)]
            if unknown:
                message += f"; {unrecognized(unknown, [], names)}"
        usage = self.format_usage()
        if usage.count("\n") > BRIEF_USAGE_LINES:
            usage = f"usage: {self.prog} [options] (all of them: {self.prog} --help)\n"
        self.exit(2, f"{usage}{self.prog}: error: {message}\n")


BRIEF_USAGE_LINES = 3  # a usage of up to this many lines is shown whole on an error
SEVERAL_WORDS = ("--prompt", "--negative-prompt")  # options whose value is often several words


def _is_option(word: str) -> bool:
    return word.startswith("-") and not word[1:2].isdigit() and word != "-"  # not -1, not a lone dash


def _name(word: str) -> str:
    return word.split("=")[0]


def unrecognized(words: list[str], given: list[str], options: list[str]) -> str:
    """The error for ``words`` no option took (out of all the words ``given``): each misspelt option with the
    nearest of ``options`` where one is close (compared without their dashes, which every option shares); a
    prompt given without quotes (``--prompt a red star``) with that prompt quoted."""
    bare = {option.lstrip("-"): option for option in options}
    said = []
    for word in words:
        nearest = get_close_matches(_name(word).lstrip("-"), list(bare), n=1) if _is_option(word) else []
        said.append(f"{word} (did you mean {bare[nearest[0]]}?)" if nearest else word)
    message = f"unrecognized arguments: {' '.join(said)}"
    for i, word in enumerate(given):
        value = list(takewhile(lambda w: not _is_option(w), given[i + 1 :]))
        if word in SEVERAL_WORDS and len(value) > 1 and value[1] in words:
            message += f'; a value of several words needs quotes: {word} "{" ".join(value)}"'
            break
    return message
