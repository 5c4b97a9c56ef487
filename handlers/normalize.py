"""Text normalisation before matching: one canonical form, and a map back to the original characters.

Residents and scammers write the same word many ways: full-width letters, traditional characters,
spaces or punctuation between characters to dodge filters ("裸 聊", "转-账", "刷.单"), emoji. Matching
runs on ``normalize(text)``; explanations use ``normalize_with_offsets`` to point at what was typed.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import opencc

_t2s = opencc.OpenCC("t2s")
# Everything that is not a letter or a digit in any script (spaces, punctuation, symbols, emoji, "_").
_noise = re.compile(r"[\W_]+")


@lru_cache(maxsize=65536)
def _to_simplified(text: str) -> str:
    return _t2s.convert(text)


def _fold(text: str) -> str:
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
        text = _to_simplified(text)
    return text.casefold()


def normalize(text: str) -> str:
    """The canonical form keywords and messages are compared in."""
    return _noise.sub("", _fold(text))


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
