"""Text normalisation before matching: one canonical form, and a map back to the original characters.

Residents and scammers write the same word many ways: full-width letters, traditional characters,
spaces or punctuation between characters to dodge filters ("裸 聊", "转-账", "刷.单"), emoji. Matching
runs on ``normalize(text)``; explanations use ``normalize_with_offsets`` to point at what was typed.
"""

from __future__ import annotations

import re
import unicodedata

import opencc

_t2s = opencc.OpenCC("t2s")
# Everything that is not a letter or a digit in any script (spaces, punctuation, symbols, emoji, "_").
_noise = re.compile(r"[\W_]+")


def _traditional_characters() -> frozenset[str]:
    """Characters OpenCC changes on their own; a text with none of them is left as it is.

    Computed once at import (~50 ms) so that the common case, a message in simplified Chinese, skips the
    converter entirely.
    """
    ranges = [(0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF)]
    chars = "".join(chr(c) for start, end in ranges for c in range(start, end + 1))
    converted = _t2s.convert(chars)
    if len(converted) != len(chars):  # should not happen char by char; be safe rather than wrong
        return frozenset(chars)
    return frozenset(a for a, b in zip(chars, converted, strict=True) if a != b)


# A character class is the fastest "any of these characters?" test CPython has (a bitmap lookup in C).
_has_traditional = re.compile("[" + "".join(sorted(_traditional_characters())) + "]").search


def _fold(text: str) -> str:
    if not text.isascii():
        if not unicodedata.is_normalized("NFKC", text):
            text = unicodedata.normalize("NFKC", text)
        if _has_traditional(text):
            text = _t2s.convert(text)
    return text.casefold()


def normalize(text: str) -> str:
    """The canonical form keywords and messages are compared in.

    Noise goes first: most of what NFKC would change in chat is full-width punctuation, which is dropped
    anyway, so the (slower) NFKC pass is only needed for the rest (full-width letters, circled digits…).
    """
    text = _noise.sub("", text)
    if text.isascii():
        return text.lower()
    if not unicodedata.is_normalized("NFKC", text):
        text = _noise.sub("", unicodedata.normalize("NFKC", text))
    if _has_traditional(text):
        text = _t2s.convert(text)
    return text.casefold()


def normalize_with_offsets(text: str) -> tuple[str, list[int]]:
    """``(normalized, offsets)`` where ``offsets[i]`` is the index in ``text`` of normalized char ``i``.

    Slower than :func:`normalize` (character by character); used to explain decisions, not on the hot path.
    """
    out: list[str] = []
    offsets: list[int] = []
    for index, char in enumerate(text):
        for folded in _fold(char):
            if not _noise.fullmatch(folded):
                out.append(folded)
                offsets.append(index)
    normalized = "".join(out)
    if normalized != normalize(text):
        # Phrase-level conversions can differ from char-by-char ones; the hot path is the truth, so fall
        # back to a proportional map rather than explain something production did not see.
        normalized = normalize(text)
        scale = len(text) / max(len(normalized), 1)
        offsets = [min(int(i * scale), len(text) - 1) for i in range(len(normalized))]
    return normalized, offsets
