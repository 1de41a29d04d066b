"""Caption cleaning before tokenizing, in the manner of the DeepFloyd / PixArt cleaner OpenSoraPlan trains with.

Lower case; URL escapes decoded, HTML tags and entities, web addresses, @handles, IP addresses and file names
removed; dashes and quotes made plain ASCII; CJK symbol blocks removed (CJK ideographs too unless
``support_chinese``); runs of punctuation and whitespace collapsed. Text is repaired with ftfy first.
"""

from __future__ import annotations

import html
import re
import urllib.parse as urlparse
from html.parser import HTMLParser

import ftfy

_URL = re.compile(
    r"\b((?:https?:(?:/{1,3}|[a-z0-9%])|www[.:]|[a-z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@)))\S*"
)
_CJK_SYMBOLS = re.compile(r"[\u31c0-\u33ff\u3400-\u4dff]+")
_CJK = re.compile(r"[\u4e00-\u9fff]+")
_DASHES = re.compile(
    r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0"
    r"\uFE31\uFE32\uFE58\uFE63\uFF0D]+"
)
_REPLACEMENTS = (
    (re.compile(r"<person>"), "person"),
    (re.compile(r"@[\w\d]+\b"), ""),
    (re.compile(r"[`´«»“”¨]"), '"'),
    (re.compile(r"[‘’]"), "'"),
    (re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"), " "),
    (re.compile(r"\\n"), " "),
    (re.compile(r"#\d{1,3}\b|#\d{5,}\b|\b\d{6,}\b"), ""),
    (re.compile(r"\S+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"), ""),
    (re.compile(r"[\"']{2,}"), '"'),
    (re.compile(r"\.{2,}"), " "),
    (re.compile(r"[#®•©™&@·º½¾¿¡§~)(\]\[}{|\\/*]+"), " "),
    (re.compile(r"\s+\.\s+"), " "),
)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def strip_html(text: str) -> str:
    """The text of ``text`` with its HTML tags removed and entities decoded."""
    parser = _Text()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def clean_caption(caption: str, support_chinese: bool = False) -> str:
    """``caption`` cleaned for the text encoder (see the module docstring)."""
    text = urlparse.unquote_plus(str(caption)).strip().lower()
    text = _URL.sub("", text)
    text = strip_html(text)
    text = _CJK_SYMBOLS.sub("", text)
    if not support_chinese:
        text = _CJK.sub("", text)
    text = _DASHES.sub("-", text)
    for pattern, replacement in _REPLACEMENTS:
        text = pattern.sub(replacement, text)
    if len(re.findall(r"[-_]", text)) > 3:  # this-is-a-slug / this_is_a_slug
        text = re.sub(r"[-_]", " ", text)
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"^['_,\-:;]|['_,\-:+]$", "", text).strip()
