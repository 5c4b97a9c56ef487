"""Text normalisation before matching: one canonical form, and a map back to the original characters.

Residents and scammers write the same word many ways: full-width letters, traditional characters,
spaces or punctuation between characters to dodge filters ("裸 聊", "转-账", "刷.单"), emoji. Matching
runs on ``normalize(text)``; explanations use ``normalize_with_offsets`` to point at what was typed.

The canonical form is defined by :func:`_reference`: drop noise (anything that is not a letter or digit),
NFKC, traditional to simplified with OpenCC (phrase-aware), case-fold. That is the truth; :func:`normalize`
computes the same string faster. Almost every character's fate does not depend on its neighbours, so one
``str.translate`` table built at import (full-width → half-width, upper → lower, noise deleted, in one C
pass) does the whole job. The few characters whose result *can* depend on context map to a marker
instead, and a text with a marker goes through :func:`_reference`:

* traditional characters (OpenCC converts phrases, not just characters: 乾隆 is not 干隆) and characters
  whose NFKC form contains one;
* Hangul conjoining jamo, and characters whose NFKC form contains a mark (it can fuse with a neighbour
  under NFKC: the second half of a canonical composition is always one);
* everything outside the table (beyond U+1FFFF: CJK extension B and later, tags, private use).

In mainland chat those are well under 1% of messages (0.07% of the benchmark's chat mix, 0.8% of its
reports, which quote the labelled set's traditional-character examples); they pay for OpenCC, the rest
do not. The table is a list indexed by code point (str.translate's fastest mapping): 1.1 M slots, ~10 MB
per process, built in ~50 ms at import.
"""

from __future__ import annotations

import re
import unicodedata

import opencc

_t2s = opencc.OpenCC("t2s")
# Everything that is not a letter or a digit in any script (spaces, punctuation, symbols, emoji, "_").
_noise = re.compile(r"[\W_]+")

_CJK_RANGES = [(0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF)]


def _traditional_characters() -> frozenset[str]:
    """Characters OpenCC changes on their own; a text with none of them is left as it is.

    Computed once at import (~50 ms) so that the common case, a message in simplified Chinese, skips the
    converter entirely.
    """
    chars = "".join(chr(c) for start, end in _CJK_RANGES for c in range(start, end + 1))
    converted = _t2s.convert(chars)
    if len(converted) != len(chars):  # should not happen char by char; be safe rather than wrong
        return frozenset(chars)
    return frozenset(a for a, b in zip(chars, converted, strict=True) if a != b)


_TRADITIONAL = _traditional_characters()
# A character class is the fastest "any of these characters?" test CPython has (a bitmap lookup in C).
_has_traditional = re.compile("[" + "".join(sorted(_TRADITIONAL)) + "]").search


def _fold(text: str) -> str:
    if not text.isascii():
        if not unicodedata.is_normalized("NFKC", text):
            text = unicodedata.normalize("NFKC", text)
        if _has_traditional(text):
            text = _t2s.convert(text)
    return text.casefold()


def _reference(text: str) -> str:
    """The definition of the canonical form (and the slow path for the rare context-dependent text).

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


# -- the fast path ---------------------------------------------------------------------------------------
_MARK = "\x00"  # noise itself (deleted by the table), so it can only appear in a translation as the marker
_TABLE_END = 0x20000  # the BMP and the SMP (emoji live there); beyond it every character takes the slow path
_FULL_END = 0x110000


# Hangul conjoining jamo compose algorithmically (L + V + T -> a syllable), outside the decomposition data.
_JAMO_RANGES = ((0x1100, 0x11FF), (0xA960, 0xA97F), (0xD7B0, 0xD7FF))
_JAMO = frozenset(chr(c) for first, last in _JAMO_RANGES for c in range(first, last + 1))


def _fuses(part: str) -> bool:
    """Whether a character can change, or change a neighbour, once next to others: traditional (OpenCC
    phrases), a mark (every second half of a canonical composition is one, e.g. U+3099 the kana voicing;
    tests/test_routing.py checks that this still holds for the running Unicode version), a character NFKC
    may reorder (non-zero combining class), or a jamo."""
    return (
        part in _TRADITIONAL
        or part in _JAMO
        or unicodedata.category(part)[0] == "M"
        or unicodedata.combining(part) != 0
    )


def _build_table() -> list[int | str | None]:
    """``table[code]``: what the character becomes (None: deleted), or the marker when context matters."""
    table: list[int | str | None] = [None] * _TABLE_END
    for code in range(_TABLE_END):
        char = chr(code)
        if not char.isalnum():  # noise (``\W``; "_" is not alphanumeric either): deleted before anything else
            continue
        if unicodedata.is_normalized("NFKC", char):
            # _fuses(char), without the mark test: no mark is alphanumeric
            if char in _TRADITIONAL or char in _JAMO or unicodedata.combining(char):
                table[code] = _MARK
                continue
            out = char
        else:
            compatible = unicodedata.normalize("NFKC", char)
            if any(_fuses(part) for part in compatible):
                table[code] = _MARK
                continue
            out = _noise.sub("", compatible)
        out = out.casefold()
        table[code] = code if out == char else (out or None)
    table.extend([_MARK] * (_FULL_END - _TABLE_END))  # one shared object: 8 bytes a slot
    return table


_TABLE = _build_table()


def normalize(text: str) -> str:
    """The canonical form keywords and messages are compared in (see :func:`_reference`)."""
    out = text.translate(_TABLE)
    if _MARK in out:
        return _reference(text)
    return out


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
