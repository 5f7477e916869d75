"""The demo grid's captions: each tile says, on its own, what its picture was asked to show and what the judge
found, in whole words (the text layout, not the pixels)."""

from __future__ import annotations

from pixart_delta_core.demo.showcase import TILE, Shown, caption_lines, demo_grid, prompt_shapes, wrapped
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


def test_every_tile_says_its_prompt_and_the_judges_verdict_in_its_colour() -> None:
    lines = caption_lines(shown(ONE, ONE), forty)
    assert text(lines) == f"LCM, 4 steps prompt: {ONE} judge: ok"
    assert lines[-1] == ("judge: ok", "darkgreen")
    wrong = caption_lines(shown(ONE, "a large blue circle at the top left, on a black background"), forty)
    assert f"prompt: {ONE}" in text(wrong)
    assert "judge: colour: asked large red circle at the top left, found large blue circle" in text(wrong)
    assert {colour for line, colour in wrong if "judge" in line or "found" in line} == {"darkred"}


def test_captions_break_between_words_and_every_line_fits() -> None:
    lines = caption_lines(shown(TWO, ONE, note="shapes on the edge map's: IoU 0.31"), forty, most=99)
    assert all(forty(line) for line, _ in lines)
    assert f"prompt: {TWO} judge: " in text(lines)  # a word cut across lines would read "st ar"
    assert lines[-1] == ("shapes on the edge map's: IoU 0.31", "dimgray")
    assert wrapped("a " + "x" * 50 + " b", forty) == ["a", "x" * 50, "b"]


def test_a_caption_too_long_gives_the_prompts_shapes_then_only_what_was_wrong() -> None:
    item = shown(TWO, ONE)
    full = caption_lines(item, forty, most=99)
    assert f"prompt: {TWO}" in text(full) and "count: asked 2, found 1" in text(full)
    shorter = caption_lines(item, forty, most=len(full) - 1)
    assert prompt_shapes(TWO) == "small blue star right, large yellow square bottom; white background"
    assert f"prompt: {prompt_shapes(TWO)}" in text(shorter) and "count: asked 2, found 1" in text(shorter)
    shortest = caption_lines(item, forty, most=5)
    assert text(shortest).endswith(
        f"prompt: {prompt_shapes(TWO)} judge: wrong background, count, colour, kind, position, size"
    )


def test_an_input_is_captioned_with_its_prompt_and_as_not_judged() -> None:
    scene = parse_caption(ONE)
    lines = caption_lines(Shown("edge map", ONE, edge_map(scene), None, "the ControlNet's input"), forty)
    assert text(lines) == f"edge map prompt: {ONE} the ControlNet's input (not judged)"
    assert lines[-1][1] == "dimgray"


def test_the_grid_grows_its_caption_band_to_its_longest_caption() -> None:
    short, long = demo_grid([shown(ONE, ONE)] * 2), demo_grid([shown(ONE, ONE), shown(TWO, ONE)])
    assert short.width == long.width == 2 * TILE
    assert TILE < short.height < long.height
