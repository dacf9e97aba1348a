"""Characters that print nothing: removed from relation text, and the test for text left with nothing.

Control characters (other than whitespace, which is collapsed separately), format characters (zero-width
space, word joiner, byte-order mark, soft hyphen, the bidirectional marks, embeddings, overrides and
isolates), lone surrogates and the replacement character U+FFFD (what undecodable text and lone surrogates
turn into) change what a tokenizer sees without showing a reader anything meaningful; a gold object made of
them alone would make the target a bare space token. The zero-width joiner and non-joiner are kept
where they join two visible characters (scripts such as Persian and Devanagari, emoji sequences need them)
and removed elsewhere.
"""

from __future__ import annotations

import unicodedata

_JOINERS = ("\u200c", "\u200d")


def strip_invisible(text: str) -> str:
    """``text`` without control, format and surrogate characters (see the module docstring)."""
    out = []
    for i, char in enumerate(text):
        category = unicodedata.category(char)
        if category == "Cc" and not char.isspace():
            continue
        if category == "Cs" or char == "\ufffd":
            continue
        if category == "Cf" and not (char in _JOINERS and _between_visible(text, i)):
            continue
        out.append(char)
    return "".join(out)


def _between_visible(text: str, i: int) -> bool:
    return 0 < i < len(text) - 1 and has_visible(text[i - 1]) and has_visible(text[i + 1])


def has_visible(text: str) -> bool:
    """Whether ``text`` holds a letter, digit, punctuation mark or symbol (a combining mark alone is not)."""
    return any(unicodedata.category(char)[0] in "LNPS" for char in text)
