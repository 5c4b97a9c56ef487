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
another (刷单 inside 刷单返利) is still seen. So do the literals every match of a regex must contain
(see ``regex_factors``): a regex runs only when one of them is present. Only routes a hit points at are
evaluated for a message (plus routes with a regex no literal could be derived from).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import ahocorasick_rs

from bot.config.schema import Config, RouteConfig, Severity, WeeklyWindow
from handlers.normalize import normalize, normalize_with_offsets
from handlers.regex_factors import required_factors

DEFAULT_SEVERITY = Severity.P2


@dataclass(frozen=True)
class _Regex:
    pattern: re.Pattern[str]
    factors: frozenset[int] | None  # keyword indexes one of which every match contains; None: always run


@dataclass(frozen=True)
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
    # What any route in this subtree could match on; a message with none of it skips the subtree.
    subtree_words: frozenset[int] = frozenset()
    subtree_always: bool = False

    @property
    def has_own_match(self) -> bool:
        return bool(self.any_words or self.all_groups or self.regexes)


@dataclass(frozen=True)
class KeywordHit:
    keyword: str  # normalised keyword
    start: int  # in the normalised text
    end: int


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    hits: tuple[KeywordHit, ...]
    regex_hits: tuple[str, ...] = ()


@dataclass(frozen=True)
class Veto:
    route: Route
    hits: tuple[KeywordHit, ...]


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class _Scope:
    group_id: str | None
    local: datetime | None  # None: time-independent (routes with active windows apply)


@dataclass
class _Scan:
    """What one message contains: keyword indexes present, with their positions."""

    text: str
    present: set[int] = field(default_factory=set)
    positions: dict[int, list[tuple[int, int]]] = field(default_factory=dict)


class Router:
    def __init__(self, config: Config) -> None:
        self._keywords: list[str] = []
        self._keyword_index: dict[str, int] = {}
        self.zone = ZoneInfo(config.timezone)
        labels = dict(config.categories)
        self.routes: tuple[Route, ...] = tuple(
            self._compile(route, None, labels) for route in config.routes
        )
        # keyword index -> positions of the top-level routes whose subtree uses it; regex subtrees always run.
        self._routes_by_word: dict[int, set[int]] = {}
        self._always: set[int] = set()
        for position, top in enumerate(self.routes):
            if top.subtree_always:
                self._always.add(position)
            for word in top.subtree_words:
                self._routes_by_word.setdefault(word, set()).add(position)
        self._automaton = (
            ahocorasick_rs.AhoCorasick(self._keywords, matchkind=ahocorasick_rs.MatchKind.Standard)
            if self._keywords
            else None
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
        factors = required_factors(pattern)
        indexes = frozenset(self._word(f) for f in factors) if factors is not None else None
        return _Regex(re.compile(pattern), indexes)

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
        words = set(route.any_words.union(*route.all_groups))
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
        return route

    def all_routes(self) -> Iterable[Route]:
        for top in self.routes:
            yield from _subtree(top)

    @property
    def keyword_count(self) -> int:
        return len(self._keywords)

    # -- match -------------------------------------------------------------------------------------
    def _scan(self, normalized: str, with_positions: bool) -> _Scan:
        scan = _Scan(normalized)
        if self._automaton is None or not normalized:
            return scan
        for index, start, end in self._automaton.find_matches_as_indexes(normalized, overlapping=True):
            scan.present.add(index)
            if with_positions:
                scan.positions.setdefault(index, []).append((start, end))
        return scan

    def classify(self, text: str, group_id: str | None = None, at: datetime | None = None) -> Decision:
        """The production decision for one message (``at``: when it was said; matters for ``active`` routes)."""
        scope = _Scope(group_id, at.astimezone(self.zone) if at else None)
        return self._decide(self._scan(normalize(text), with_positions=False), scope, explain=False)

    def explain(
        self, text: str, group_id: str | None = None, at: datetime | None = None
    ) -> tuple[Decision, list[int]]:
        """The same decision, with keyword positions and vetoes; also the map back to ``text``."""
        normalized, offsets = normalize_with_offsets(text)
        scope = _Scope(group_id, at.astimezone(self.zone) if at else None)
        return self._decide(self._scan(normalized, with_positions=True), scope, explain=True), offsets

    def _decide(self, scan: _Scan, scope: _Scope, explain: bool) -> Decision:
        candidates = set(self._always)
        for word in scan.present:
            candidates |= self._routes_by_word.get(word, set())
        if not candidates:
            return Decision(scan.text, ())
        matches: list[RouteMatch] = []
        vetoes: list[Veto] = []
        for position in sorted(candidates):
            route = self.routes[position]
            found = self._match_tree(route, scan, scope, vetoes if explain else None, explain)
            if found is not None:
                matches.append(found)
                if not route.continue_:
                    break
        return Decision(scan.text, tuple(matches), tuple(vetoes))

    def _match_tree(
        self, route: Route, scan: _Scan, scope: _Scope, vetoes: list[Veto] | None, explain: bool
    ) -> RouteMatch | None:
        if not route.subtree_always and route.subtree_words.isdisjoint(scan.present):
            return None
        if route.groups and scope.group_id not in route.groups:
            return None
        if route.active and scope.local is not None and not any(w.covers(scope.local) for w in route.active):
            return None
        if route.exclude_words & scan.present:
            if vetoes is not None and (route.has_own_match and self._own_match(route, scan, explain)):
                vetoes.append(Veto(route, self._hits(route.exclude_words & scan.present, scan)))
            return None
        own = self._own_match(route, scan, explain) if route.has_own_match else None
        if route.has_own_match and own is None:
            return None
        for child in route.children:
            found = self._match_tree(child, scan, scope, vetoes, explain)
            if found is not None:
                return found
        return own

    def _own_match(self, route: Route, scan: _Scan, explain: bool) -> RouteMatch | None:
        present = scan.present
        words: set[int] = set()
        matched = False
        if route.any_words & present:
            matched = True
            words |= route.any_words & present
        if route.all_groups and all(group & present for group in route.all_groups):
            matched = True
            for group in route.all_groups:
                words |= group & present
        regex_hits: list[str] = []
        for regex in route.regexes:
            if regex.factors is not None and not regex.factors & present:
                continue  # the regex cannot match: none of its necessary literals is in the text
            found = regex.pattern.search(scan.text)
            if found:
                matched = True
                regex_hits.append(found.group(0))
                if not explain:
                    break
        if not matched:
            return None
        return RouteMatch(route, self._hits(words, scan) if explain else (), tuple(regex_hits))

    def _hits(self, words: Iterable[int], scan: _Scan) -> tuple[KeywordHit, ...]:
        hits = [
            KeywordHit(self._keywords[index], start, end)
            for index in words
            for start, end in scan.positions.get(index, [])
        ]
        return tuple(sorted(hits, key=lambda hit: (hit.start, hit.end)))


def _subtree(route: Route) -> Iterable[Route]:
    yield route
    for child in route.children:
        yield from _subtree(child)


def route_by_id(router: Router, route_id: str) -> Route | None:
    return next((route for route in router.all_routes() if route.id == route_id), None)


def highlight(original: str, offsets: Sequence[int], hit: KeywordHit) -> tuple[int, int]:
    """The span of ``original`` a hit on the normalised text covers."""
    return offsets[hit.start], offsets[hit.end - 1] + 1
