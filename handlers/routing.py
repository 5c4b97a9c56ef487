"""The router: a config's route tree compiled once into one Aho-Corasick automaton, then applied per message.

Semantics (modelled on Alertmanager's routing tree):

* Top-level routes are tried in order; the first that matches wins, unless it sets ``continue`` so that
  later routes are tried too.
* A route matches when no ``exclude`` keyword is present and any of: an ``any`` keyword is present, every
  ``all`` group has a keyword present, a ``regex`` matches. A route with no match of its own matches when
  one of its children does.
* When a route matches, its children are tried in order and the first matching child (recursively)
  is the result; if none matches, the route itself is. Children inherit category, severity, reply and
  ping from their parent when they leave them unset.
* Scope: a route with ``groups`` only applies to messages in those groups, and one with ``active``
  windows only at those local times (children inherit both).

Every keyword of every route sits in one automaton with overlapping matching, so a keyword nested in
another (刷单 inside 刷单返利) is still seen. So do the literals a regex needs (see ``regex_factors``):
each alternative of a regex needs one literal of each of several sets ("clauses"); its most selective
clause is its trigger and sits in the automaton, the others are checked on the text (one C call) only
when the trigger fired, and the regex engine runs only when they are all there. Only routes a hit points
at are visited (plus routes with a regex no literal could be derived from).

The hot path (``classify``) is written for CPython, where every Python-level operation costs tens of
nanoseconds: one ``str.translate`` to normalise, one automaton call, and for a message with hits a set of
keyword indexes and one int bitmask (each keyword's precomputed bits OR-ed together) whose bits are the
routes, at any depth, and the regex alternatives the message could satisfy. A message no keyword hits
returns at once; result objects are built only for a match. ``explain`` runs the same code with a trace
that also records positions and vetoes, so it cannot decide differently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import ahocorasick_rs

from bot.config.schema import Config, RouteConfig, Severity, WeeklyWindow
from handlers.normalize import normalize, normalize_with_offsets
from handlers.regex_factors import required_alternatives

DEFAULT_SEVERITY = Severity.P2
# Up to this many automaton entries a DFA is built: ~35% faster scans than the contiguous NFA
# ahocorasick-rs picks by default, for a few MB (5 MB at 1,600 entries). It grows with the keywords
# (67 MB at 20,000), so large rule sets keep the NFA (4 MB at 20,000). See BENCHMARKS.md.
_DFA_MAX_KEYWORDS = 2000

# The most frequent characters of written Chinese. Only a heuristic for choosing which clause of a regex,
# or which ``all`` group, stands in the automaton for the rest (a set of lone common characters fires on
# most chat messages); it never changes a decision, only how often the rest is checked.
_COMMON_CHARACTERS = frozenset(
    "的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会家可下而过天去能对小多然于"
    "心学么之都好看起发当没成只如事把还用第样道想作种开美总从无情己面最女但现前些所同日手又行意动方期它头经长儿回"
    "位分爱老因很给名法间斯知世什两次使身者被高已亲其进此话常与活正感吗呢吧啊哦打"
)


# One alternative of a regex's gate: its trigger clause (keyword indexes, in the automaton) and a check that
# the normalised text also has a literal of each of its other clauses (None when there are none).
_Gate = tuple[frozenset[int], Callable[[str], object] | None]


@dataclass(frozen=True)
class _Regex:
    pattern: re.Pattern[str]
    # Keyword indexes one of which every match needs (the alternatives' triggers); None: it always runs.
    factors: frozenset[int] | None
    # When the triggers alone are not the whole gate: the regex runs only if one alternative passes.
    gates: tuple[_Gate, ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    """A route with inherited fields resolved and keywords in normalised form."""

    id: str
    category: str
    category_label: str
    severity: Severity
    reply: str | None
    ping: str | None
    continue_: bool
    groups: frozenset[str]
    active: tuple[WeeklyWindow, ...]
    dedup_minutes: int
    any_words: frozenset[int]
    all_groups: tuple[frozenset[int], ...]
    regexes: tuple[_Regex, ...]
    exclude_words: frozenset[int]
    children: tuple[Route, ...]
    path: tuple[str, ...]  # ids from the top-level route down to this one
    # Keywords one of which any match in this subtree needs (``any`` words, the words of the most selective
    # ``all`` group, regex triggers); a message with none of them skips the subtree.
    subtree_words: frozenset[int] = frozenset()
    subtree_always: bool = False
    own: bool = field(default=False, repr=False, compare=False)  # has_own_match, precomputed
    node: int = field(default=0, repr=False, compare=False)  # this route's bit in the router's masks
    children_mask: int = field(default=0, repr=False, compare=False)  # the children's bits
    regex_mask: int = field(default=0, repr=False, compare=False)  # the bits of its regexes' alternatives

    @property
    def has_own_match(self) -> bool:
        return bool(self.any_words or self.all_groups or self.regexes)


@dataclass(frozen=True, slots=True)
class KeywordHit:
    keyword: str  # normalised keyword
    start: int  # in the normalised text
    end: int


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    hits: tuple[KeywordHit, ...]
    regex_hits: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Veto:
    route: Route
    hits: tuple[KeywordHit, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    normalized: str
    matches: tuple[RouteMatch, ...]
    vetoed: tuple[Veto, ...] = ()

    @property
    def first(self) -> RouteMatch | None:
        return self.matches[0] if self.matches else None

    @property
    def category(self) -> str:
        return self.matches[0].route.category if self.matches else "none"


_new = object.__new__
_EMPTY: tuple[()] = ()
_set_normalized = Decision.normalized.__set__  # type: ignore[attr-defined]
_set_matches = Decision.matches.__set__  # type: ignore[attr-defined]
_set_vetoed = Decision.vetoed.__set__  # type: ignore[attr-defined]
_set_route = RouteMatch.route.__set__  # type: ignore[attr-defined]
_set_hits = RouteMatch.hits.__set__  # type: ignore[attr-defined]
_set_regex_hits = RouteMatch.regex_hits.__set__  # type: ignore[attr-defined]


def _decision(normalized: str, matches: tuple[RouteMatch, ...], vetoed: tuple[Veto, ...]) -> Decision:
    """``Decision(normalized, matches, vetoed)`` at half the cost (no frozen ``__setattr__`` dance): the
    one object every message gets."""
    decision = _new(Decision)
    _set_normalized(decision, normalized)
    _set_matches(decision, matches)
    _set_vetoed(decision, vetoed)
    return decision


def _route_match(route: Route, hits: tuple[KeywordHit, ...], regex_hits: tuple[str, ...]) -> RouteMatch:
    match = _new(RouteMatch)
    _set_route(match, route)
    _set_hits(match, hits)
    _set_regex_hits(match, regex_hits)
    return match


class _Trace:
    """What ``explain`` records besides the decision: where each keyword is, and which routes were vetoed."""

    def __init__(self, keywords: list[str], hits: Iterable[tuple[int, int, int]]) -> None:
        self.keywords = keywords
        self.positions: dict[int, list[tuple[int, int]]] = {}
        for index, start, end in hits:
            self.positions.setdefault(index, []).append((start, end))
        self.vetoes: list[Veto] = []

    def hits(self, words: Iterable[int]) -> tuple[KeywordHit, ...]:
        found = [
            KeywordHit(self.keywords[index], start, end)
            for index in words
            for start, end in self.positions.get(index, [])
        ]
        return tuple(sorted(found, key=lambda hit: (hit.start, hit.end)))


def _no_hits(_text: str, _overlapping: bool) -> list:  # type: ignore[type-arg]
    return []


class Router:
    def __init__(self, config: Config) -> None:
        self._keywords: list[str] = []
        self._keyword_index: dict[str, int] = {}
        self.zone = ZoneInfo(config.timezone)
        labels = dict(config.categories)
        self.routes: tuple[Route, ...] = tuple(
            self._compile(route, None, labels) for route in config.routes
        )
        # Every route (at any depth) is a bit: top-level routes first, in order (the lowest bits, so the
        # int of candidates stays small), then the others in config order (so a route's children come in
        # their order). keyword index -> the routes whose subtree could match on that keyword; routes with a
        # regex no literal could be derived from are always candidates. A route outside a message's mask is
        # one whose subtree cannot match it, so it is never visited.
        self._nodes: tuple[Route, ...] = self.routes + tuple(
            route for top in self.routes for route in _subtree(top) if route is not top
        )
        self._word_mask: list[int] = [0] * len(self._keywords)
        self._always_mask = 0
        self._top_mask = 0
        for bit, route in enumerate(self._nodes):
            object.__setattr__(route, "node", 1 << bit)
            if route.subtree_always:
                self._always_mask |= 1 << bit
            for word in route.subtree_words:
                self._word_mask[word] |= 1 << bit
        for route in self._nodes:
            object.__setattr__(route, "children_mask", sum(child.node for child in route.children))
        for top in self.routes:
            self._top_mask |= top.node
        # Then every alternative of every regex is a bit too (above the routes', in config order), set by
        # its trigger keywords: a route's regexes whose bits are not in a message's mask are not looked at.
        # ``_by_bit[bit]``: the route, or (regex, the check for its alternative's other clauses).
        self._by_bit: list[Route | tuple[_Regex, Callable[[str], object] | None]] = list(self._nodes)
        for route in self._nodes:
            regex_mask = 0
            for regex in route.regexes:
                alternatives = regex.gates or ((regex.factors or frozenset(), None),)
                for trigger, also in alternatives:
                    bit = 1 << len(self._by_bit)
                    self._by_bit.append((regex, also))
                    regex_mask |= bit
                    if regex.factors is None:
                        self._always_mask |= bit
                    for word in trigger:
                        self._word_mask[word] |= bit
            object.__setattr__(route, "regex_mask", regex_mask)
        # store_patterns: matches come back as the very keyword objects, so the lookups below hash nothing.
        self._automaton = (
            ahocorasick_rs.AhoCorasick(
                self._keywords,
                matchkind=ahocorasick_rs.MatchKind.Standard,
                store_patterns=True,
                implementation=(
                    ahocorasick_rs.Implementation.DFA if len(self._keywords) <= _DFA_MAX_KEYWORDS else None
                ),
            )
            if self._keywords
            else None
        )
        # (keyword index, start, end) for every occurrence of every keyword, nested ones included (explain).
        self._find: Callable[[str, bool], list[tuple[int, int, int]]] = (
            self._automaton.find_matches_as_indexes if self._automaton is not None else _no_hits
        )
        # The keyword of every occurrence (classify): no positions, so no byte-to-character map to build.
        self._find_words: Callable[[str, bool], list[str]] = (
            self._automaton.find_matches_as_strings if self._automaton is not None else _no_hits
        )

    # -- compile -----------------------------------------------------------------------------------
    def _word(self, keyword: str) -> int:
        normalized = normalize(keyword)
        if not normalized:
            # A keyword made only of punctuation can never match after normalisation; keep it visible.
            normalized = keyword
        if normalized not in self._keyword_index:
            self._keyword_index[normalized] = len(self._keywords)
            self._keywords.append(normalized)
        return self._keyword_index[normalized]

    def _regex(self, pattern: str) -> _Regex:
        compiled = re.compile(pattern)
        alternatives = required_alternatives(pattern)
        if not alternatives:
            return _Regex(compiled, None)
        gates: list[_Gate] = []
        for clauses in alternatives:
            # Literals are compared in normalised form, as keywords are (a literal that normalises to nothing
            # stays as written: it can never be present, and neither can a match of the regex).
            normalised = [frozenset(normalize(f) or f for f in clause) for clause in clauses]
            trigger = max(normalised, key=_selectivity)
            others = [clause for clause in normalised if clause is not trigger]
            # One C call for all of them: a lookahead per clause, each finding any of its literals.
            also = re.compile("".join(
                "(?=.*?(?:" + "|".join(re.escape(f) for f in sorted(clause, key=_longest_first)) + "))"
                for clause in others
            ), re.DOTALL).match if others else None
            gates.append((frozenset(self._word(f) for f in sorted(trigger)), also))
        factors = frozenset().union(*(trigger for trigger, _ in gates))
        if len(gates) == 1 and not gates[0][1]:
            return _Regex(compiled, factors)  # the trigger is the whole gate
        return _Regex(compiled, factors, tuple(gates))

    def _compile(self, cfg: RouteConfig, parent: Route | None, labels: dict[str, str]) -> Route:
        category = cfg.category or (parent.category if parent else cfg.id)
        route = Route(
            id=cfg.id,
            category=category,
            category_label=labels.get(category, category),
            severity=cfg.severity or (parent.severity if parent else DEFAULT_SEVERITY),
            reply=cfg.reply if cfg.reply is not None else (parent.reply if parent else None),
            ping=cfg.ping if cfg.ping is not None else (parent.ping if parent else None),
            continue_=cfg.continue_,
            groups=frozenset(cfg.groups) or (parent.groups if parent else frozenset()),
            active=tuple(cfg.active) or (parent.active if parent else ()),
            dedup_minutes=cfg.dedup_minutes,
            any_words=frozenset(self._word(w) for w in cfg.match.any),
            all_groups=tuple(frozenset(self._word(w) for w in group) for group in cfg.match.all),
            regexes=tuple(self._regex(p) for p in cfg.match.regex),
            exclude_words=frozenset(self._word(w) for w in cfg.match.exclude),
            children=(),
            path=((*parent.path, cfg.id) if parent else (cfg.id,)),
        )
        children = tuple(self._compile(child, route, labels) for child in cfg.routes)
        # A route matches on an ``any`` word, on every ``all`` group having a word (so on a word of its
        # most selective group, the one that stands for them all here), or on a regex's trigger.
        words = set(route.any_words)
        if route.all_groups:
            words |= max(route.all_groups, key=lambda group: _selectivity(self._keywords[i] for i in group))
        always = False
        for regex in route.regexes:
            if regex.factors is None:
                always = True
            else:
                words |= regex.factors
        for child in children:
            words |= child.subtree_words
            always = always or child.subtree_always
        object.__setattr__(route, "children", children)
        object.__setattr__(route, "subtree_words", frozenset(words))
        object.__setattr__(route, "subtree_always", always)
        object.__setattr__(route, "own", route.has_own_match)
        return route

    def all_routes(self) -> Iterable[Route]:
        for top in self.routes:
            yield from _subtree(top)

    @property
    def keyword_count(self) -> int:
        return len(self._keywords)

    # -- match -------------------------------------------------------------------------------------
    def classify(self, text: str, group_id: str | None = None, at: datetime | None = None) -> Decision:
        """The production decision for one message (``at``: when it was said; for ``active`` routes)."""
        normalized = normalize(text)
        found = self._find_words(normalized, True)
        if not found and not self._always_mask:
            return _decision(normalized, _EMPTY, _EMPTY)  # the common case: nothing to evaluate
        index = self._keyword_index
        return self._decide(normalized, {index[word] for word in found}, group_id, at, None)

    def explain(
        self, text: str, group_id: str | None = None, at: datetime | None = None
    ) -> tuple[Decision, list[int]]:
        """The same decision, with keyword positions and vetoes; also the map back to ``text``."""
        normalized, offsets = normalize_with_offsets(text)
        hits = self._find(normalized, True)
        present = {hit[0] for hit in hits}
        return self._decide(normalized, present, group_id, at, _Trace(self._keywords, hits)), offsets

    def _decide(
        self, text: str, present: set[int], group_id: str | None, at: datetime | None, trace: _Trace | None
    ) -> Decision:
        word_mask = self._word_mask
        mask = self._always_mask
        for word in present:
            mask |= word_mask[word]
        matches: list[RouteMatch] = []
        nodes = self._nodes
        candidates = mask & self._top_mask
        while candidates:  # lowest bit first: top-level routes in config order
            lowest = candidates & -candidates
            candidates ^= lowest
            route = nodes[lowest.bit_length() - 1]
            found = self._match_tree(route, present, text, group_id, at, trace, mask)
            if found is not None:
                matches.append(found)
                if not route.continue_:
                    break
        return _decision(text, tuple(matches), tuple(trace.vetoes) if trace is not None else _EMPTY)

    def _match_tree(
        self, route: Route, present: set[int], text: str, group_id: str | None, at: datetime | None,
        trace: _Trace | None, mask: int,
    ) -> RouteMatch | None:
        # Only called for routes in ``mask``: ones whose subtree has a keyword (or always-run regex) here.
        if route.groups and group_id not in route.groups:
            return None
        if route.active and at is not None:
            local = at.astimezone(self.zone)
            if not any(w.covers(local) for w in route.active):
                return None
        if not route.exclude_words.isdisjoint(present):
            # explain: a route its own keywords or regexes would have matched was vetoed by an exclusion
            if trace is not None and route.own and self._own_match(route, present, text, trace, mask):
                trace.vetoes.append(Veto(route, trace.hits(route.exclude_words & present)))
            return None
        own = None
        if route.own:
            own = self._own_match(route, present, text, trace, mask)
            if own is None:
                return None
        children = mask & route.children_mask
        nodes = self._nodes
        while children:  # in config order, skipping children whose subtree cannot match
            lowest = children & -children
            children ^= lowest
            found = self._match_tree(nodes[lowest.bit_length() - 1], present, text, group_id, at, trace, mask)
            if found is not None:
                return found
        return own

    def _own_match(
        self, route: Route, present: set[int], text: str, trace: _Trace | None, mask: int
    ) -> RouteMatch | None:
        matched = not route.any_words.isdisjoint(present)
        all_matched = False
        if route.all_groups and (trace is not None or not matched):
            for group in route.all_groups:
                if group.isdisjoint(present):
                    break
            else:
                all_matched = matched = True
        # Alternatives whose trigger is here, regex by regex in config order; the rest cannot match.
        pending = mask & route.regex_mask
        first: str | None = None  # classify keeps the first regex match only
        regex_hits: list[str] = []  # explain keeps them all
        tried = None
        by_bit = self._by_bit
        while pending:
            lowest = pending & -pending
            pending ^= lowest
            regex, also = by_bit[lowest.bit_length() - 1]  # type: ignore[misc]
            if regex is tried:
                continue  # another alternative of a regex already run
            if also is not None and also(text) is None:
                continue  # this alternative lacks a literal one of its clauses needs
            tried = regex
            found = regex.pattern.search(text)
            if found:
                matched = True
                if trace is None:
                    first = found.group(0)
                    break
                regex_hits.append(found.group(0))
        if not matched:
            return None
        if trace is None:
            return _route_match(route, _EMPTY, (first,) if first is not None else _EMPTY)
        words = route.any_words & present
        if all_matched:
            for group in route.all_groups:
                words |= group & present
        return _route_match(route, trace.hits(words), tuple(regex_hits))


def _longest_first(literal: str) -> tuple[int, str]:
    return -len(literal), literal


def _selectivity(literals: Iterable[str]) -> tuple[float, int]:
    """How rarely a set of literals is expected to fire, one of them being enough: the weakest literal's
    length, common characters and ASCII counting half, then fewer literals."""
    literals = list(literals)
    weakest = min(
        (sum(0.5 if c in _COMMON_CHARACTERS or c.isascii() else 1.0 for c in f) for f in literals),
        default=float("inf"),  # nothing can satisfy an empty set: it never needs checking
    )
    return weakest, -len(literals)


def _subtree(route: Route) -> Iterable[Route]:
    yield route
    for child in route.children:
        yield from _subtree(child)


def route_by_id(router: Router, route_id: str) -> Route | None:
    return next((route for route in router.all_routes() if route.id == route_id), None)


def highlight(original: str, offsets: Sequence[int], hit: KeywordHit) -> tuple[int, int]:
    """The span of ``original`` a hit on the normalised text covers."""
    return offsets[hit.start], offsets[hit.end - 1] + 1
