"""User text shown as text: study and job names, ids from the URL, error messages.

Streamlit renders the body of ``st.title``, ``st.error``, ``st.caption``, ``st.toast`` and
widget labels as Markdown, so a name like ``![x](http://host/pixel)`` would make every viewer's
browser fetch that image, and ``[Log in](http://phish)`` would be a link in our own error box.
``plain`` makes a string inert there: every Markdown/HTML/LaTeX punctuation mark is
backslash-escaped, and a word joiner (U+2060, invisible) breaks the patterns that Markdown turns
into links or icons without punctuation (``http://…``, ``www.…``, ``a@b.c``, ``:material/…:``).
"""

from __future__ import annotations

import re

_MARKUP = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$&=^\"'])")
_JOIN = "\u2060"
_LINKISH = re.compile(r"(:|@|(?i:ww)(?=w))")
MAX_SHOWN = 300


def plain(text: object, limit: int = MAX_SHOWN) -> str:
    """``text`` as inert Markdown on one line, shortened to ``limit`` characters."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = f"{s[:limit]}… ({len(s)} characters)"
    return _LINKISH.sub(lambda m: m.group(1) + _JOIN, _MARKUP.sub(r"\\\1", s))


def plain_lines(text: object, limit: int = MAX_SHOWN) -> str:
    """Several lines of user text (one problem a line) as an inert Markdown list."""
    return "\n".join(f"- {plain(line, limit)}" for line in str(text).splitlines() if line)


_ESCAPED = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~$&=^\"'])")


def shown(markdown: str) -> str:
    """What a reader sees of ``plain``'s output (its inverse, up to whitespace and length)."""
    return _ESCAPED.sub(r"\1", markdown).replace(_JOIN, "")
