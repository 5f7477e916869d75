"""Prompt preparation: lower-case and strip always, the reference's caption cleaning on request."""

from __future__ import annotations

import pytest

from pixart_delta_core.text.captions import prepare_prompt

CLEANED = [
    ("A <b>Red</b> Cat @john_doe visit https://example.com/x?y=1 now!!", "a red cat visit now!!"),
    ("this-is-my-cute-cat", "this is my cute cat"),
    ("IMG_1234.jpg, a dog on the beach", "a dog on the beach"),
    ("***SALE*** Beautiful dress free shipping", "sale beautiful dress"),
    ("a%20cat%20on%20a%20mat", "a cat on a mat"),
    ("1920x1080 wallpaper of snowy mountains", "wallpaper of snowy mountains"),
    ("“Quoted” caption with ‘single’ quotes", "\"quoted\" caption with 'single' quotes"),
    ("www.shop.com red shoes", "red shoes"),
    ("a cat — sleeping", "a cat - sleeping"),
    ("Page 3 of the catalogue, product jc6640", "of the catalogue, product"),
    ("&quot;hello&quot; &amp; goodbye", '"hello" goodbye'),
    ("Server 192.168.0.1 photo", "server photo"),
    ('"A whole quoted caption"', "a whole quoted caption"),
    ("a cat 猫 sitting", "a cat sitting"),
    ("click for details: a vintage car", "a vintage car"),
    ("a cat...sitting....on a mat", "a cat sitting on a mat"),
    ("a dog (with a hat) [cute] {fun} | nice / ok \\ yes", "a dog with a hat cute fun nice ok yes"),
    ("#1 best seller #123456 item 1234567", "best seller item"),
    ("line one\\nline two", "line one line two"),
    ("hello,world.this is it", "hello, world. this is it"),
    ("   ", ""),
]


@pytest.mark.parametrize(("raw", "cleaned"), CLEANED, ids=[c for _, c in CLEANED])
def test_caption_cleaning(raw: str, cleaned: str) -> None:
    assert prepare_prompt(raw, clean=True) == cleaned


def test_without_cleaning_only_case_and_outer_spaces_change() -> None:
    raw = "  A <b>Red</b> Cat @john https://example.com, 1920x1080!!  "
    assert prepare_prompt(raw) == "a <b>red</b> cat @john https://example.com, 1920x1080!!"
    assert prepare_prompt("") == ""
