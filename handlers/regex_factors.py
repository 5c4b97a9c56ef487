"""Necessary literals of a regular expression, so the automaton can tell when a regex is worth running.

For a pattern, :func:`required_factors` returns a set of strings such that every match contains at least
one of them, or ``None`` when no such set can be derived (the regex must then run on every message).
The same idea as RE2's and Hyperscan's prefilters: most messages contain none of the factors, and the
regex engine is never entered for them.
"""

from __future__ import annotations

import re
from typing import Any

try:  # Python 3.11+
    from re import _parser as sre_parse  # type: ignore[attr-defined]
    from re._constants import (  # type: ignore[attr-defined]
        ASSERT,
        ASSERT_NOT,
        AT,
        BRANCH,
        IN,
        LITERAL,
        MAX_REPEAT,
        MIN_REPEAT,
        NEGATE,
        POSSESSIVE_REPEAT,
        RANGE,
        SUBPATTERN,
    )
except ImportError:  # pragma: no cover - older layouts
    import sre_parse  # type: ignore[no-redef]
    from sre_constants import (  # type: ignore[no-redef]
        ASSERT, ASSERT_NOT, AT, BRANCH, IN, LITERAL, MAX_REPEAT, MIN_REPEAT, NEGATE, RANGE, SUBPATTERN,
    )

    POSSESSIVE_REPEAT = object()

MAX_CLASS = 12  # a character class up to this size becomes that many one-character factors
MAX_FACTORS = 64

Factors = frozenset[str] | None


def required_factors(pattern: str) -> Factors:
    try:
        parsed = sre_parse.parse(pattern)
    except re.error:
        return None
    factors = _sequence(list(parsed))
    if factors is not None and (not factors or "" in factors or len(factors) > MAX_FACTORS):
        return None
    return factors


def _better(a: Factors, b: Factors) -> Factors:
    """Of two alternative necessary sets, prefer the more selective (longer strings, fewer of them)."""
    if a is None:
        return b
    if b is None:
        return a

    def score(factors: frozenset[str]) -> tuple[int, int]:
        return (min(len(f) for f in factors), -len(factors))

    return a if score(a) >= score(b) else b


def _sequence(items: list[tuple[Any, Any]]) -> Factors:
    """A concatenation: any element's necessary set will do; runs of literals join into longer strings."""
    best: Factors = None
    run = ""
    for op, arg in items:
        if op is LITERAL:
            run += chr(arg)
            continue
        if run:
            best = _better(best, frozenset({run}))
            run = ""
        best = _better(best, _item(op, arg))
    if run:
        best = _better(best, frozenset({run}))
    return best


def _item(op: Any, arg: Any) -> Factors:
    if op is SUBPATTERN:
        return _sequence(list(arg[-1]))
    if op is BRANCH:
        union: set[str] = set()
        for branch in arg[1]:
            factors = _sequence(list(branch))
            if factors is None:
                return None
            union |= factors
        return frozenset(union)
    if op in (MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT):
        low, _high, inner = arg
        return _sequence(list(inner)) if low >= 1 else None
    if op is IN:
        chars: set[str] = set()
        for kind, value in arg:
            if kind is LITERAL:
                chars.add(chr(value))
            elif kind is RANGE and value[1] - value[0] < MAX_CLASS:
                chars.update(chr(c) for c in range(value[0], value[1] + 1))
            else:  # NEGATE, categories, wide ranges
                return None
        return frozenset(chars) if 0 < len(chars) <= MAX_CLASS else None
    if op is ASSERT:  # a lookahead/lookbehind that must match: what it needs, the whole match needs
        return _sequence(list(arg[1]))
    if op in (ASSERT_NOT, AT, NEGATE):
        return None
    return None
