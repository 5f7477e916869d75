"""The demo grid's captions: each tile says, on its own, what its picture was asked to show and what the judge
found, in whole words (the text layout, not the pixels)."""

from __future__ import annotations

from pixart_delta_core.demo.showcase import TILE, Shown, caption_lines, demo_grid, verdict_lines, wrapped
from pixart_delta_core.world.judge import judge, parse_caption
from pixart_delta_core.world.reading import read_picture
from pixart_delta_core.world.render import edge_map, render

ONE = "a large red circle at the top left, on a black background"
TWO = "a small blue star on the right and a large yellow square at the bottom, on a white background"


def shown(prompt: str, drawn: str, title: str = "LCM, 4 steps", note: str = "") -> Shown:
    """A tile whose picture is the world's own rendering of ``drawn``, judged against ``prompt``."""
    image = render(parse_caption(drawn))
    return Shown(title, prompt, image, judge(parse_caption(prompt), read_picture(image)), note)


def forty(line: str) -> bool:
    return len(line) <= 40


def text(lines: list[tuple[str, str]]) -> str:
    return " ".join(line for line, _ in lines)


def test_every_tile_says_its_prompt_and_pass_or_fail_in_words_and_colour() -> None:
    lines = caption_lines(shown(ONE, ONE), forty)
    assert text(lines) == f"LCM, 4 steps prompt: {ONE} judge: PASS (everything as asked)"
    assert lines[-1] == ("judge: PASS (everything as asked)", "darkgreen")
    wrong = caption_lines(shown(ONE, "a large blue circle at the top left, on a black background"), forty)
    assert f"prompt: {ONE}" in text(wrong)
    assert "judge: FAIL (colour: asked large red circle at the top left, found large blue circle" in text(wrong)
    assert {colour for line, colour in wrong if "judge" in line or "found" in line} == {"darkred"}


def test_captions_break_between_words_and_every_line_fits() -> None:
    note = "overlap of the shapes with the edge map's (IoU): 0.31"
    lines = caption_lines(shown(TWO, ONE, note=note), forty)
    assert all(forty(line) for line, _ in lines)
    assert f"prompt: {TWO} judge: " in text(lines)  # a word cut across lines would read "st ar"
    assert text(lines).endswith(note) and lines[-1][1] == "dimgray"
    assert wrapped("a " + "x" * 50 + " b", forty) == ["a", "x" * 50, "b"]


def test_a_long_caption_keeps_the_real_prompt_and_what_the_judge_found_in_full() -> None:
    lines = caption_lines(shown(TWO, ONE), lambda line: len(line) <= 20)  # narrow: many more than 7 lines
    assert len(lines) > 7
    verdict = shown(TWO, ONE).verdict.line()
    assert text(lines) == f"LCM, 4 steps prompt: {TWO} judge: FAIL ({verdict})"
    assert "count: asked 2, found 1" in verdict and "found large red circle at the top left" in verdict


def test_an_input_is_captioned_with_its_prompt_and_as_not_judged() -> None:
    scene = parse_caption(ONE)
    lines = caption_lines(Shown("edge map", ONE, edge_map(scene), None, "the ControlNet's input"), forty)
    assert text(lines) == f"edge map prompt: {ONE} the ControlNet's input (not judged)"
    assert lines[-1][1] == "dimgray"


def test_the_terminal_says_pass_or_fail_as_the_tiles_do() -> None:
    printed = verdict_lines([shown(ONE, ONE), shown(TWO, ONE)])
    assert printed[:3] == ["", f"[LCM, 4 steps] {ONE}", "  judge: PASS (everything as asked)"]
    assert printed[5] == f"  judge: FAIL ({shown(TWO, ONE).verdict.line()})"


def test_the_grid_grows_its_caption_band_to_its_longest_caption() -> None:
    short, long = demo_grid([shown(ONE, ONE)] * 2), demo_grid([shown(ONE, ONE), shown(TWO, ONE)])
    assert short.width == long.width == 2 * TILE
    assert TILE < short.height < long.height
