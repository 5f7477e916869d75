"""Prompt preparation: lower-case and strip always, the reference's caption cleaning on request.

The corpus below holds messy prompts and what the reference's cleaning (PixArt-alpha's T5 embedder,
``clean_caption`` applied twice) makes of them, worked out from its rules. The same corpus is run
through diffusers' port of that cleaning where its optional packages (beautifulsoup4, ftfy) are
installed: an independent implementation of the same rules.
"""

from __future__ import annotations

import importlib.util

import pytest

from pixart_delta_core.text.captions import prepare_prompt

CLEANED = [
    ("A <b>Red</b> Cat @john_doe visit https://example.com/x?y=1 now!!", "a red cat visit ?y=1 now!!"),
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
    ("a cat, ", "a cat"),
    ("a portrait of a woman, oil painting, ", "a portrait of a woman, oil painting"),
    ("sunset over the sea -", "sunset over the sea"),
    ("a lighthouse (detailed)", "a lighthouse detailed"),
    ("masterpiece, best quality, 1girl, ", "masterpiece, best quality, 1girl"),
    ("a cat: ", "a cat"),
    ("- a dog", "a dog"),
    (" 'a cat' ", "a cat"),
    ("a photo of a cat [sharp]", "a photo of a cat sharp"),
    ("download free wallpaper https://www.site.org/path/img.png now", "wallpaper now"),
    ("visit www:example for more", "visit xample for more"),
    ("a car (2020) #42", "a car 2020"),
    ("ＦＵＬＬＷＩＤＴＨ text", "fullwidth text"),
    ("a cat; a dog;", "a cat; a dog;"),
    ("beautiful ___ landscape___", "beautiful landscape"),
    ("a cat,, @john", "a cat"),
    ("a red fox, https://x.com", "a red fox"),
    ("a fox: #12", "a fox"),
    ("tree+ @me", "tree"),
    ("“a quoted caption”, https://x.com", "a quoted caption"),
    ("ﬁne ﬂowers in a ﬁeld", "fine flowers in a field"),
    ("ｶﾀｶﾅ and \u3000 spaces", "カタカナ and spaces"),
    ("a house - ", "a house"),
    ("_underscore start", "underscore start"),
    ("'quoted' and more'", "quoted' and more"),
    ("A&amp;B &lt;tag&gt; text", "a b text"),
    ("price 12.5x3 and 3x4 cm", "price 12. and cm"),
    ("model jc6640vc and 6640vc231 and j2d1a2a", "model and and"),
    ("worldwide free shipping on all orders", "on all orders"),
    ("see page 12, click on here for more", "see , for more"),
    ("png images of cats", "of cats"),
    (".hidden", ""),
    ("a cat : a dog", "a cat: a dog"),
    ("https://a.com https://b.org/c", ""),
    ("Photo by John Doe on Unsplash", "photo by john doe on unsplash"),
    ("a cat, 1920x1080,", "a cat"),
    ("a cat, ...", "a cat"),
    ("an image: **bold**, ", "an image: bold"),
    ("a cat,, jc6640", "a cat,"),
    ("jc6640 ,,a cat", ", a cat"),
    ("a red fox -- @someone", "a red fox"),
    ("portrait, 8k, ++ @artist", "portrait, 8k"),
]

# diffusers' port leaves out one step of the reference: its text repair (ftfy, then HTML entities) does
# not strip the caption, so a caption that ends in a removed word keeps one more trailing comma there.
DIFFUSERS_DEPARTS = {"a cat,, @john": "a cat,", "“a quoted caption”, https://x.com": '"a quoted caption"'}


@pytest.mark.parametrize(("raw", "cleaned"), CLEANED, ids=[str(i) for i in range(len(CLEANED))])
def test_caption_cleaning(raw: str, cleaned: str) -> None:
    assert prepare_prompt(raw, clean=True) == cleaned


@pytest.mark.skipif(
    importlib.util.find_spec("bs4") is None or importlib.util.find_spec("ftfy") is None,
    reason="diffusers cleans captions only with beautifulsoup4 and ftfy installed (pip install beautifulsoup4 ftfy)",
)
def test_caption_cleaning_matches_diffusers_port_of_the_reference() -> None:
    from diffusers import PixArtAlphaPipeline

    pipe = PixArtAlphaPipeline.__new__(PixArtAlphaPipeline)  # its cleaning needs no models

    def theirs(text: str) -> str:
        return pipe._text_preprocessing(text, clean_caption=True)[0]

    compared = [raw for raw, _ in CLEANED if raw not in DIFFUSERS_DEPARTS]
    assert [prepare_prompt(raw, clean=True) for raw in compared] == [theirs(raw) for raw in compared]
    assert {raw: theirs(raw) for raw in DIFFUSERS_DEPARTS} == DIFFUSERS_DEPARTS


def test_without_cleaning_only_case_and_outer_spaces_change() -> None:
    raw = "  A <b>Red</b> Cat @john https://example.com, 1920x1080!!  "
    assert prepare_prompt(raw) == "a <b>red</b> cat @john https://example.com, 1920x1080!!"
    assert prepare_prompt("") == ""
