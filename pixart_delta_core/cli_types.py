"""The command line's value types: argparse ``type=`` functions that refuse a value in the pack's words, saying what
was expected and what was found (argparse's own message names the function: "invalid _positive value: '2.5'")."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from difflib import get_close_matches
from typing import Any, NoReturn


def whole_number(of: str = "", least: int = 1, most: int | None = None, multiple_of: int = 1) -> Callable[[str], int]:
    """A type for whole numbers (``of`` what, e.g. "pixels") from ``least`` to ``most`` (no upper bound: None), each
    a multiple of ``multiple_of``."""
    positive = least == 1 and most is None
    expected = ("a positive whole number" if positive else "a whole number") + (f" of {of}" if of else "")
    bounds = [] if positive else [f"{least} to {most}" if most is not None else f"{least} or more"]
    if multiple_of > 1:
        bounds.append(f"a multiple of {multiple_of}")
    expected += f" ({', '.join(bounds)})" if bounds else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"expected {expected}, found {text or 'nothing'}")
        if value % multiple_of:
            below, above = value - value % multiple_of, value - value % multiple_of + multiple_of
            near = [n for n in (below, above) if n >= least and (most is None or n <= most)]
            raise argparse.ArgumentTypeError(
                f"expected {expected}, found {text} (nearest: {' or '.join(map(str, near))})"
            )
        return value

    return parse


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


class Parser(argparse.ArgumentParser):
    """The command line's parser (its subcommands' too: argparse makes them of the same class). On a usage error
    a usage longer than a few lines (generate's is some twenty) is shortened to one line that points at --help,
    so the error line is not buried under it; exit status 2, as argparse's."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None) -> Any:
        """As argparse's, but words no option takes are reported by the subcommand they were given to (argparse
        leaves them to the top parser, whose usage does not show the subcommand's options), with the nearest
        option's name for a misspelt one."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            parser = self._subcommand(parsed) or self
            parser.error(unrecognized(extra, [o for a in parser._actions for o in a.option_strings]))
        return parsed

    def _subcommand(self, parsed: argparse.Namespace) -> argparse.ArgumentParser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):  # argparse names no public type
                chosen = action.choices.get(getattr(parsed, action.dest, None))
                return chosen._subcommand(parsed) or chosen if isinstance(chosen, Parser) else chosen
        return None

    def error(self, message: str) -> NoReturn:
        usage = self.format_usage()
        if usage.count("\n") > BRIEF_USAGE_LINES:
            usage = f"usage: {self.prog} [options] (all of them: {self.prog} --help)\n"
        self.exit(2, f"{usage}{self.prog}: error: {message}\n")


BRIEF_USAGE_LINES = 3  # a usage of up to this many lines is shown whole on an error


def unrecognized(words: list[str], options: list[str]) -> str:
    """The error for ``words`` no option took: each misspelt option with the nearest of ``options``; a loose word
    (not the value of a misspelt option before it) with a hint to quote a value of several words."""
    said, loose = [], False
    for i, word in enumerate(words):
        nearest = get_close_matches(word.split("=")[0], options, n=1) if word.startswith("-") else []
        said.append(f"{word} (did you mean {nearest[0]}?)" if nearest else word)
        loose |= not word.startswith("-") and (i == 0 or not words[i - 1].startswith("-"))
    message = f"unrecognized arguments: {' '.join(said)}"
    if loose:
        example = ' (--prompt "a large red star")' if "--prompt" in options else ""
        message += f"; a value of several words needs quotes{example}"
    return message
