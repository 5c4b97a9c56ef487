"""The knowledge base (``knowledge.yaml``): answers to the questions residents ask most, matched tolerantly.

Matching runs on the canonical form of ``handlers.normalize`` (simplified, half-width, lower case, no
punctuation), after dropping @-mentions and polite filler (请问, 您好, 王警官…). For each entry the score is
the best of its question variants, each compared two ways:

* shared character pairs (bigrams), weighted by how specific a pair is to one entry (IDF over the
  entries, so 怎么 or 身份 count for little and 补办 or 临时 for a lot), as the F1 of "how much of the
  variant is in the question" and "how much of the question the variant explains";
* ``difflib`` sequence similarity, which forgives a wrong character (身份正 for 身份证) and word order;

plus a bonus for each of the entry's keywords found in the question. Below ``match_threshold`` there is
no answer. Loading is cached on the file's modification time, so an edited file is used at once.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rapidfuzz.fuzz import ratio as sequence_ratio

from bot.config.loader import ConfigError, read_yaml
from handlers.normalize import normalize

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KEYWORD_BONUS_FIRST = 0.3
KEYWORD_BONUS_MORE = 0.1
KEYWORD_BONUS_MAX = 0.45

# Said to anyone, about anything: removed before comparing so that they neither help nor hurt a match.
_FILLER = re.compile(
    "请问一下|请问|问一下|问下|想问下|想问|我想问|咨询一下|咨询|打扰一下|打扰了|麻烦问一下|麻烦问|麻烦您|麻烦|"
    "您好|你好|各位|大家好|谢谢|多谢|[一-龥]?警官|民警同志|警察同志|公号"
)
# Question words every entry shares: left out of the sequence comparison, where they would make any two
# short questions look alike (the pair score already weighs them by how common they are).
_GENERIC = re.compile(
    "怎么办|怎么样|怎么|怎样|如何|咋|什么|啥|哪里|哪儿|在哪|去哪|吗|呢|啊|呀|吧|要|能|可以|需要")
_MENTION = re.compile(r"@[^\s\u2005@]{1,40}[\s\u2005]?")
_CJK_SPACE = re.compile(r"(?<=[^\x00-\x7f]) (?=[^\x00-\x7f])")


class _EntryModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)
    title: str = Field(min_length=1)
    category: str = Field(min_length=1)
    questions: list[str] = Field(min_length=1)
    keywords: list[str] = Field(default_factory=list)
    answer: str = Field(min_length=1)

    @field_validator("questions", "keywords")
    @classmethod
    def _non_empty(cls, values: list[str]) -> list[str]:
        for value in values:
            if not normalize(str(value)):
                raise ValueError(f"{value!r} has no letters or digits left after normalisation")
        return values


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    entries: list[_EntryModel] = Field(default_factory=list)


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    category: str
    answer: str
    questions: tuple[str, ...]  # as written
    variants: tuple[str, ...]  # normalised, filler removed
    keywords: tuple[str, ...]  # normalised


@dataclass(frozen=True)
class Match:
    entry: Entry
    score: float
    variant: str  # the normalised variant that scored best
    keywords: tuple[str, ...]  # keywords found


class KnowledgeError(Exception):
    def __init__(self, issues: list[str]) -> None:
        self.issues = issues
        super().__init__("\n".join(issues))


def clean(text: str) -> str:
    """The form questions are compared in: mentions and filler dropped, then normalised."""
    text = _MENTION.sub(" ", text)
    folded = normalize(text)
    return _FILLER.sub("", folded) or folded


def _core(text: str) -> str:
    return _GENERIC.sub("", text) or text


def _bigrams(text: str) -> set[str]:
    if len(text) < 2:
        return {text} if text else set()
    return {text[i:i + 2] for i in range(len(text) - 1)}


@dataclass
class KnowledgeBase:
    entries: tuple[Entry, ...] = ()
    source: str = ""
    _weights: dict[str, float] = field(default_factory=dict)
    _variant_grams: dict[tuple[int, int], set[str]] = field(default_factory=dict)
    _variant_cores: dict[tuple[int, int], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        document_frequency: dict[str, int] = {}
        for entry in self.entries:
            grams: set[str] = set()
            for text in (*entry.variants, *entry.keywords, clean(entry.title)):
                grams |= _bigrams(text)
            for gram in grams:
                document_frequency[gram] = document_frequency.get(gram, 0) + 1
        total = max(len(self.entries), 1)
        self._weights = {g: math.log(1 + total / df) for g, df in document_frequency.items()}
        self._unknown_weight = math.log(1 + total)  # a pair no entry has: as specific as it gets
        keys = [(e, v, variant)
                for e, entry in enumerate(self.entries) for v, variant in enumerate(entry.variants)]
        self._variant_grams = {(e, v): _bigrams(variant) for e, v, variant in keys}
        self._variant_cores = {(e, v): _core(variant) for e, v, variant in keys}

    def _weight(self, grams: set[str]) -> float:
        return sum(self._weights.get(g, self._unknown_weight) for g in grams)

    def _similarity(self, query_core: str, query_grams: set[str], entry_index: int,
                    variant_index: int) -> float:
        grams = self._variant_grams[(entry_index, variant_index)]
        shared = query_grams & grams
        pair_score = 0.0
        if shared:
            covered = self._weight(shared)
            of_variant = covered / self._weight(grams)
            of_query = covered / self._weight(query_grams)
            pair_score = 2 * of_variant * of_query / (of_variant + of_query)
        variant_core = self._variant_cores[(entry_index, variant_index)]
        # rapidfuzz's Indel ratio (2 x longest common subsequence / total length, in C++). difflib's
        # SequenceMatcher took a sixth of the intake's CPU; its ratio is never higher (0.2% of pairs
        # differed), and on 1,617 labelled, test and public chat texts both picked the same entries.
        sequence = sequence_ratio(query_core, variant_core) / 100
        # The sequence ratio forgives typos but is generous with short texts that share only common words
        # (社保卡丢了怎么办 / 身份证丢了怎么办): it can lift the pair score halfway to it, not replace it.
        return max(pair_score, (pair_score + sequence) / 2)

    def rank(self, text: str) -> list[Match]:
        """Every entry with its score, best first."""
        query = clean(text)
        if not query:
            return []
        query_grams, query_core = _bigrams(query), _core(query)
        found: list[Match] = []
        for e, entry in enumerate(self.entries):
            best, best_variant = 0.0, ""
            for v, variant in enumerate(entry.variants):
                similarity = self._similarity(query_core, query_grams, e, v)
                if similarity > best:
                    best, best_variant = similarity, variant
            hits = tuple(k for k in entry.keywords if k in query)
            bonus = 0.0
            if hits:
                bonus = min(KEYWORD_BONUS_MAX, KEYWORD_BONUS_FIRST + KEYWORD_BONUS_MORE * (len(hits) - 1))
            found.append(Match(entry, min(1.0, best + bonus), best_variant, hits))
        found.sort(key=lambda m: m.score, reverse=True)
        return found

    def match(self, text: str, threshold: float) -> Match | None:
        ranked = self.rank(text)
        if ranked and ranked[0].score >= threshold:
            return ranked[0]
        return None

    def get(self, entry_id: str) -> Entry | None:
        return next((e for e in self.entries if e.id == entry_id), None)


def parse_knowledge(text: str, source: str = "knowledge.yaml") -> KnowledgeBase:
    """Parse and validate; raises KnowledgeError naming the file, line and entry."""
    try:
        root, data = read_yaml(text, source)
    except ConfigError as exc:
        raise KnowledgeError([str(issue) for issue in exc.issues]) from exc
    if data is None:
        return KnowledgeBase((), source)
    try:
        parsed = _FileModel.model_validate(data)
    except ValidationError as exc:
        issues = []
        for error in exc.errors():
            location = error["loc"]
            line = _line_of(root, location)
            path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in location)
            path = path.replace(".[", "[")
            issues.append(f"{source}:{line}: {path}: {error['msg'].removeprefix('Value error, ')}")
        raise KnowledgeError(issues) from exc
    seen: set[str] = set()
    entries = []
    for index, item in enumerate(parsed.entries):
        if item.id in seen:
            line = _line_of(root, ("entries", index, "id"))
            raise KnowledgeError([f"{source}:{line}: entries[{index}].id: duplicate id {item.id!r}"])
        seen.add(item.id)
        entries.append(Entry(
            id=item.id,
            title=item.title.strip(),
            category=item.category,
            answer=_CJK_SPACE.sub("", item.answer.strip()),  # folded YAML lines: no space between Chinese
            questions=tuple(item.questions),
            variants=tuple(clean(q) for q in item.questions),
            keywords=tuple(normalize(k) for k in item.keywords),
        ))
    return KnowledgeBase(tuple(entries), source)


def _line_of(root: Any, location: tuple[Any, ...]) -> int:
    node = root
    for part in location:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((value for key, value in node.value
                          if isinstance(key, yaml.ScalarNode) and key.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1 if node is not None else 1


def resolve_path(name: str) -> Path:
    """A relative path is looked up in the working directory, then next to main.py (the project root)."""
    path = Path(name)
    if path.is_absolute():
        return path
    for base in (Path.cwd(), PROJECT_ROOT):
        candidate = base / path
        if candidate.exists():
            return candidate
    return Path.cwd() / path


def load_knowledge(name: str) -> KnowledgeBase:
    path = resolve_path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KnowledgeError([f"{path}: cannot read the knowledge base: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise KnowledgeError([f"{path}: the knowledge base is not UTF-8 text"]) from exc
    return parse_knowledge(text, str(path))


_cache: dict[Path, tuple[tuple[int, int], KnowledgeBase]] = {}


def knowledge_for(name: str) -> KnowledgeBase:
    """The knowledge base the settings name, re-read when the file changes. A missing or broken file is
    logged once per version and gives an empty knowledge base: questions are then acknowledged, not lost."""
    path = resolve_path(name)
    try:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = (0, 0)
    cached = _cache.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        knowledge = load_knowledge(name)
    except KnowledgeError as exc:
        log.error("knowledge base unusable, questions will be acknowledged without answers: %s", exc)
        knowledge = KnowledgeBase((), str(path))
    _cache[path] = (stamp, knowledge)
    return knowledge


def render_answer(answer: str, context: dict[str, Any]) -> str:
    """An entry's answer may use the template variables of the reply (e.g. {{ station.name }})."""
    if "{" not in answer:
        return answer
    from bot.config.templates import render

    return render(answer, context)


def check_knowledge(name: str, categories: Iterable[str]) -> tuple[KnowledgeBase | None, list[str]]:
    """For ``main.py check``: the knowledge base the settings name, and its problems (unreadable, invalid,
    or entries whose category is not one of the configured inquiry categories)."""
    try:
        knowledge = load_knowledge(name)
    except KnowledgeError as exc:
        return None, exc.issues
    known = set(categories)
    issues = [f"{knowledge.source}: entry {entry.id!r}: unknown category {entry.category!r}; expected one of "
              f"{', '.join(sorted(known))} (inquiries.categories in config.yaml)"
              for entry in knowledge.entries if entry.category not in known]
    return knowledge, issues
