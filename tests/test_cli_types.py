"""Whole-number options say what they expected and what they found, in the pack's words (argparse's own message
named the type function: "invalid _positive value: '128.5'", "invalid int value: '2.5'"); a usage error shows a
long usage as one line pointing at --help, and an unknown option is told by its subcommand with the nearest name."""

from __future__ import annotations

import re

import pytest

from pixart_delta_core.cli import build_parser, main

GENERATE = ["generate", "--transformer", "a", "--t5", "b", "--vae", "c", "--prompt", "x"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*GENERATE, "--width", "128.5"], "argument --width: expected a positive whole number of pixels, found 128.5"),
        ([*GENERATE, "--height", "-5"], "argument --height: expected a positive whole number of pixels, found -5"),
        ([*GENERATE, "--steps", "2.5"], "argument --steps: expected a positive whole number of steps, found 2.5"),
        ([*GENERATE, "--seed", "-1"], rf"argument --seed: expected a whole number \(0 to {2**64 - 1}\), found -1"),
        ([*GENERATE, "--batch", "two"], "argument --batch: expected a positive whole number of images, found two"),
        (
            [*GENERATE, "--heads", ""],
            "argument --heads: expected a positive whole number of attention heads, found nothing",
        ),
        (
            [*GENERATE, "--sample-size", "0"],
            "argument --sample-size: expected a positive whole number of latent pixels",
        ),
        (
            [*GENERATE, "--training-resolution", "1001"],
            r"argument --training-resolution: expected a positive whole number of pixels \(a multiple of 8\), found "
            r"1001 \(nearest: 1000 or 1008\)",
        ),
        ([*GENERATE, "--training-resolution", "4"], r"found 4 \(nearest: 8\)"),
        ([*GENERATE, "--training-resolution", "-8"], r"\(a multiple of 8\), found -8$"),
        (
            [*GENERATE, "--caption-length", "1e3"],
            "argument --caption-length: expected a positive whole number of tokens",
        ),
    ],
)
def test_a_whole_number_option_says_what_it_expected_and_found(capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid" not in err
    assert re.search(message, err), err


def usage_error(capsys, argv: list[str]) -> list[str]:
    """The lines a usage error prints (exit status 2, as argparse's)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.splitlines()


def test_a_long_usage_is_one_line_pointing_at_help_on_an_error(capsys) -> None:
    lines = usage_error(capsys, ["generate", "--prompt", "x"])
    assert lines == [
        "usage: python -m pixart_delta_core generate [options] (all of them: python -m pixart_delta_core generate "
        "--help)",
        "python -m pixart_delta_core generate: error: the following arguments are required: --transformer, --t5, --vae",
    ]


def test_a_short_usage_is_shown_whole_on_an_error(capsys) -> None:
    lines = usage_error(capsys, ["judge"])
    assert lines[0].startswith("usage: python -m pixart_delta_core judge [-h]"), lines
    assert "--prompt PROMPT" in "".join(lines[:-1]) and "[options]" not in lines[0], lines
    assert lines[-1].endswith("error: the following arguments are required: images"), lines


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (
            [*GENERATE, "--stpes", "2"],
            "python -m pixart_delta_core generate: error: unrecognized arguments: --stpes (did you mean --steps?) 2",
        ),
        (
            [*GENERATE[:-1], "a", "large", "star"],
            "python -m pixart_delta_core generate: error: unrecognized arguments: large star; a value of several "
            'words needs quotes: --prompt "a large star"',
        ),
        (
            [*GENERATE, "--seed", "1", "2"],  # a loose word that is no prompt's: no hint about quotes
            "python -m pixart_delta_core generate: error: unrecognized arguments: 2",
        ),
        (
            [*GENERATE, "--size", "256"],  # nothing close (--seed shares only its dashes and an s): no guess
            "python -m pixart_delta_core generate: error: unrecognized arguments: --size 256",
        ),
        (
            ["generate", "--transfomer", "a", "--t5", "b", "--vae", "c", "--prompt", "x"],  # a required one misspelt
            "python -m pixart_delta_core generate: error: the following arguments are required: --transformer; "
            "unrecognized arguments: --transfomer (did you mean --transformer?)",
        ),
        (
            ["train", "lcm", "--confg", "x.toml"],
            "python -m pixart_delta_core train: error: the following arguments are required: --config; unrecognized "
            "arguments: --confg (did you mean --config?)",
        ),
        (
            ["world", "--out", "w", "--cout", "3"],
            "python -m pixart_delta_core world: error: unrecognized arguments: --cout (did you mean --count?) 3",
        ),
        (
            ["judge", "a.png", "--jsn"],
            "python -m pixart_delta_core judge: error: unrecognized arguments: --jsn (did you mean --json?)",
        ),
    ],
)
def test_an_unknown_option_is_told_by_its_subcommand_with_the_nearest_name(capsys, argv, error) -> None:
    lines = usage_error(capsys, argv)
    assert lines[-1] == error, lines
    assert lines[0].startswith(f"usage: python -m pixart_delta_core {argv[0]} "), lines


@pytest.mark.parametrize("seed", ["٣", "３", "1_000", "+2", " 7", "7 "])
def test_a_whole_number_written_otherwise_than_in_ascii_digits_is_refused(capsys, seed: str) -> None:
    """``int()`` reads other scripts' digits, underscores, a plus sign and spaces; the seed written back in a PNG's
    parameters would then not be the one typed, so a whole-number option (here --seed) takes the digits 0-9 alone."""
    with pytest.raises(SystemExit) as exit_info:
        main([*GENERATE, "--seed", seed])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"argument --seed: expected a whole number (0 to {2**64 - 1}), found {seed} (written otherwise than in " in err
    )
    assert "(written otherwise than in the digits 0-9)" in err


@pytest.mark.parametrize(
    ("option", "text", "value"), [("--seed", "0", 0), ("--seed", "0042", 42), ("--steps", "12", 12)]
)
def test_a_whole_number_in_ascii_digits_is_taken(option: str, text: str, value: int) -> None:
    args = build_parser().parse_args([*GENERATE, option, text])
    assert getattr(args, option[2:]) == value
