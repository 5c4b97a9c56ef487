"""Necessary literals of a regular expression, so the automaton can tell when a regex is worth running.

For a pattern, :func:`required_factors` returns a set of strings such that every match contains at least
one of them, or ``None`` when no such set can be derived (the regex must then run on every message).
The same idea as RE2's and Hyperscan's prefilters: most messages contain none of the factors, and the
regex engine is never entered for them.

:func:`required_clauses` goes further: a conjunction of such sets ("clauses"), every one of which a text
must satisfy for the regex to match there. ``(爸|妈)[^打]{0,6}打(我|她)`` needs one of 爸/妈 *and* one of
打我/打她 (consecutive elements with a small finite language multiply into longer literals); gating on
both keeps the regex engine away from the many chat messages that merely contain 打 or 妈. Lookarounds
count too: what a positive lookahead needs is in the text (not necessarily in the match), and the gate
only ever asks about the text. :func:`required_alternatives` does that per alternative of a top-level
``|``, so that ``火(光|舌)|引燃`` is gated on 火光/火舌 or 引燃, not on 火.

The router uses the clauses (see ``handlers.routing``); :func:`required_factors` is kept for callers that
want one set.
"""

from __future__ import annotations

import re

# the project needs Python 3.11+, where the regex parser lives in re._parser
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
from typing import Any

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


Clauses = tuple[frozenset[str], ...]


def required_clauses(pattern: str) -> Clauses:
    """Sets of literals such that any text the pattern matches in contains one literal of every set.

    ``()`` when nothing can be derived (the regex must run on every text). Clauses implied by another
    clause are dropped (``{"打"}`` when ``{"打119"}`` is there), so what remains is small and independent.
    """
    try:
        parsed = sre_parse.parse(pattern)
    except re.error:
        return ()
    return _tidy(_sequence_clauses(list(parsed)))


def required_alternatives(pattern: str) -> tuple[Clauses, ...]:
    """For a pattern that is an alternation at the top (``a.*b|c.*d``), the clauses of each alternative.

    A text can match only if it satisfies every clause of at least one alternative. Any other pattern is
    its own single alternative. ``()`` when some alternative needs nothing (the regex must always run).
    """
    try:
        parsed = sre_parse.parse(pattern)
    except re.error:
        return ()
    items = list(parsed)
    while len(items) == 1 and items[0][0] is SUBPATTERN:  # (a|b) is a|b
        items = list(items[0][1][-1])
    branches = [list(b) for b in items[0][1][1]] if len(items) == 1 and items[0][0] is BRANCH else [items]
    alternatives = []
    for branch in branches:
        clauses = _tidy(_sequence_clauses(branch))
        if not clauses:
            return ()
        alternatives.append(clauses)
    return tuple(alternatives)


def _tidy(clauses: list[frozenset[str]]) -> Clauses:
    # Within a clause, a literal containing another one adds nothing (营业执照 has 执照 in it).
    reduced = set()
    for clause in clauses:
        if not clause or "" in clause or len(clause) > MAX_FACTORS:
            continue  # dropping a clause only makes the gate weaker, never wrong
        reduced.add(frozenset(f for f in clause if not any(g != f and g in f for g in clause)))
    kept: list[frozenset[str]] = []
    # Stronger clauses first (fewer, longer literals), so that weaker ones they imply are seen as implied.
    for clause in sorted(reduced, key=lambda c: (len(c), -min(len(f) for f in c), sorted(c))):
        if not any(_implies(strong, clause) for strong in kept):
            kept.append(clause)
    return tuple(kept)


def _implies(strong: frozenset[str], weak: frozenset[str]) -> bool:
    """Whether a text with a literal of ``strong`` always has one of ``weak`` (each contains one of them)."""
    return all(any(w in s for w in weak) for s in strong)


MAX_EXACT = MAX_FACTORS  # the most strings an element's exact language may have before it is given up


def _sequence_clauses(items: list[tuple[Any, Any]]) -> list[frozenset[str]]:
    """A concatenation needs what each of its elements needs.

    Consecutive elements with a small finite language (literals, small classes, alternations of such,
    ``x?``) multiply into one set of strings: ``(在|正在)打(人|他)`` needs one of 在打人/在打他/正在打人/
    正在打他 (reduced to 在打人/在打他), far rarer in chat than 在 or 打 alone.
    """
    clauses: list[frozenset[str]] = []
    exact: frozenset[str] = frozenset({""})

    def flush() -> None:
        if "" not in exact:
            clauses.append(exact)

    for op, arg in items:
        if op is ASSERT:  # zero-width: what the lookaround needs is in the text; the run goes on
            clauses.extend(_sequence_clauses(list(arg[1])))
            continue
        if op in (AT, ASSERT_NOT):
            continue
        language = _exact(op, arg)
        if language is not None and len(exact) * len(language) <= 4 * MAX_EXACT:
            product = _suffix_reduced({a + b for a in exact for b in language})
            if len(product) <= MAX_EXACT:
                exact = product
                continue
        flush()
        if language is not None:
            exact = language
            continue
        exact = frozenset({""})
        clauses.extend(_item_clauses(op, arg))
    flush()
    return clauses


def _suffix_reduced(strings: set[str]) -> frozenset[str]:
    """Drop strings that end with another (non-empty) one: what follows is appended to both alike."""
    return frozenset(s for s in strings if not any(t and t != s and s.endswith(t) for t in strings))


def _exact(op: Any, arg: Any) -> frozenset[str] | None:
    """Every string an element can match, when that is a small finite set; None otherwise."""
    if op is LITERAL:
        return frozenset({chr(arg)})
    if op is IN:
        return _item(op, arg)
    if op is SUBPATTERN:
        return _exact_sequence(list(arg[-1]))
    if op is BRANCH:
        union: set[str] = set()
        for branch in arg[1]:
            language = _exact_sequence(list(branch))
            if language is None:
                return None
            union |= language
        return frozenset(union) if len(union) <= MAX_EXACT else None
    if op in (MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT):
        low, high, inner = arg
        language = _exact_sequence(list(inner))
        if language is None or high > 3:
            return None
        out: set[str] = set()
        power: set[str] = {""}
        for count in range(high + 1):
            if count >= low:
                out |= power
            if count < high:
                power = {a + b for a in power for b in language}
            if len(out) > MAX_EXACT or len(power) > MAX_EXACT:
                return None
        return frozenset(out)
    if op in (AT, ASSERT, ASSERT_NOT):
        return frozenset({""})  # zero-width
    return None


def _exact_sequence(items: list[tuple[Any, Any]]) -> frozenset[str] | None:
    out: set[str] = {""}
    for op, arg in items:
        language = _exact(op, arg)
        if language is None:
            return None
        out = {a + b for a in out for b in language}
        if len(out) > MAX_EXACT:
            return None
    return frozenset(out)


def _item_clauses(op: Any, arg: Any) -> list[frozenset[str]]:
    """What an element without a small exact language needs."""
    if op is SUBPATTERN:
        return _sequence_clauses(list(arg[-1]))
    if op is BRANCH:
        # (A1 and A2) or (B1 and B2) implies (A or B) for any clause A of the first branch and B of the
        # second: one clause, the union of each branch's most selective clause.
        union: set[str] = set()
        for branch in arg[1]:
            best = _most_selective(_sequence_clauses(list(branch)))
            if best is None:
                return []
            union |= best
        return [frozenset(union)]
    if op in (MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT):
        low, _high, inner = arg
        return _sequence_clauses(list(inner)) if low >= 1 else []
    return []  # ANY, categories, negated or wide classes, group references: nothing required


def _most_selective(clauses: list[frozenset[str]]) -> frozenset[str] | None:
    best: Factors = None
    for clause in clauses:
        if clause and "" not in clause:
            best = _better(best, clause)
    return best
