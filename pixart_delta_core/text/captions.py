"""Prompt text as the reference prepares it before tokenizing (docs/REFERENCE.md §2).

Every prompt is lower-cased and stripped. Optionally it is also cleaned the way the training captions
were: web noise (URLs, HTML, @handles, file names, product codes, runs of punctuation...) removed,
the whole cleaning applied twice. The rules follow the reference's step for step (PixArt-alpha's T5
embedder, ``clean_caption``), quirks included: a web address loses only its scheme or its domain and
path, and the edge punctuation is trimmed before the last strip, so some trailing commas stay. HTML is
stripped with a tag pattern and entity decoding; text repair covers Unicode normalisation, character
widths and Latin ligatures, not mojibake.
"""

from __future__ import annotations

import html
import re
import unicodedata
import urllib.parse
from collections.abc import Callable

Step = Callable[[str], str]


def prepare_prompt(text: str, clean: bool = False) -> str:
    """The text the tokenizer sees: lower-cased and stripped, or cleaned (twice, as the reference does)."""
    if clean:
        return clean_caption(clean_caption(text))
    return text.lower().strip()


def clean_caption(text: str) -> str:
    """One pass of the reference's caption cleaning (lower-cases too)."""
    for step in _STEPS:
        text = step(text)
    return text.strip()


def _sub(pattern: str, replacement: str = "") -> Step:
    compiled = re.compile(pattern)
    return lambda text: compiled.sub(replacement, text)


def _strip_html(text: str) -> str:
    return html.unescape(re.sub(r"<[^<>]*>", "", text))


def _dashes_to_spaces(text: str) -> str:
    """A caption-as-slug (this-is-my-cat, this_is_my_cat): more than three dashes or underscores."""
    return re.sub(r"[-_]", " ", text) if len(re.findall(r"[-_]", text)) > 3 else text


def _normalise(text: str) -> str:
    """Text repair as the reference's (NFC, no control characters, standard-width letters, no Latin ligatures,
    HTML entities decoded twice, stripped); mojibake is not repaired."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(_standard_form(c) for c in text if c in "\t\n" or unicodedata.category(c) != "Cc")
    return html.unescape(html.unescape(text)).strip()


def _standard_form(char: str) -> str:
    """Fullwidth/halfwidth forms and Latin ligatures (ﬁ) as their plain letters; the ideographic space as a space."""
    if char == "\u3000":
        return " "
    if "\uff01" <= char <= "\uffdc" or "\ufb00" <= char <= "\ufb06":
        return unicodedata.normalize("NFKC", char)
    return char


_TLD = r"(?:com|co|ru|net|org|edu|gov|it)"
# A web address as the reference removes it: only a scheme ("https:" or "www:") with its slashes or first
# character, or a bare domain with its path; what follows a scheme (or a domain's "?query") stays.
_DOMAIN = rf"[a-zA-Z0-9.\-]+\.{_TLD}[\w/-]*\b/?(?!@)"
_DASHES = "\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40\u301c\u3030\u30a0"
_DASHES += "\ufe31\ufe32\ufe58\ufe63\uff0d"
_BAD_PUNCTUATION = r"#®•©™&@·º½¾¿¡§~()\[\]{}|\\/*"
_FILE_TYPES = r"(?:png|jpe?g|bmp|webp|eps|pdf|apk|mp4)"

_STEPS: tuple[Step, ...] = (
    lambda text: urllib.parse.unquote_plus(str(text)).strip().lower(),
    _sub(r"<person>", "person"),
    _sub(rf"\b(?:https?:(?:/{{1,3}}|[a-zA-Z0-9%])|{_DOMAIN})"),
    _sub(rf"\b(?:www:(?:/{{1,3}}|[a-zA-Z0-9%])|{_DOMAIN})"),
    _strip_html,
    _sub(r"@\w+\b"),
    _sub(r"[\u31c0-\u9fff]+"),  # CJK strokes, symbols and ideographs
    _sub(f"[{_DASHES}]+", "-"),
    _sub(r"[`´«»“”¨]", '"'),
    _sub(r"[‘’]", "'"),
    _sub(r"&quot;?|&amp"),
    _sub(r"\d{1,3}(?:\.\d{1,3}){3}", " "),  # IP addresses
    _sub(r"\d:\d\d\s+$"),  # trailing article ids
    _sub(r"\\n", " "),  # literal backslash-n
    _sub(r"#(?:\d{1,3}|\d{5,})\b"),
    _sub(r"\b\d{6,}\b"),
    _sub(rf"\S+\.{_FILE_TYPES}"),
    _sub(r"[\"']{2,}", '"'),
    _sub(r"\.{2,}", " "),
    _sub(f"[{_BAD_PUNCTUATION}]+", " "),
    _sub(r"\s+\.\s+", " "),
    _dashes_to_spaces,
    _normalise,
    _sub(r"\b[a-zA-Z]{1,3}\d{3,15}\b"),  # product codes: jc6640 (entities decoded above may be upper case)
    _sub(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b"),  # jc6640vc
    _sub(r"\b\d+[a-zA-Z]+\d+\b"),  # 6640vc231
    _sub(r"(?:worldwide\s+)?(?:free\s+)?shipping"),
    _sub(r"(?:free\s)?download(?:\sfree)?"),
    _sub(r"\bclick\b\s(?:for|on)\s\w+"),
    _sub(rf"\b{_FILE_TYPES}(?:\simages?)?"),
    _sub(r"\bpage\s+\d+\b"),
    _sub(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),  # j2d1a2a
    _sub(r"\b\d+\.?\d*[xх×]\d+\.?\d*\b"),  # sizes: 1920x1080
    _sub(r"\b\s+:\s+", ": "),
    _sub(r"(\D[,./])\b", r"\1 "),
    _sub(r"\s+", " "),
    # The reference trims quotes and edge punctuation without stripping spaces first: a caption that
    # ends in "x, " keeps its comma (the model trained on it so); only the final strip follows.
    _sub(r"^[\"']([\s\S]+)[\"']$", r"\1"),
    _sub(r"^['_,\-:;]"),
    _sub(r"['_,\-:+]$"),
    _sub(r"^\.\S+$"),
)
