"""Admin-written routing expectations (``main.py route --test FILE``), checked with the production router."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from bot.config.loader import ConfigError, ConfigIssue, format_path
from bot.config.schema import Config
from handlers.explain import parse_local_time
from handlers.routing import Router


class Expectation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    group: str | None = None
    at: str | None = Field(None, description='local time, "2026-11-28 23:00"')
    category: str | None = None
    route: str | None = None


@dataclass(frozen=True)
class Outcome:
    expectation: Expectation
    line: int
    category: str
    route: str | None

    @property
    def passed(self) -> bool:
        wanted = self.expectation
        category_ok = wanted.category is None or wanted.category == self.category
        route_ok = wanted.route is None or wanted.route == (self.route or "none")
        return category_ok and route_ok


def load_expectations(path: Path) -> list[tuple[int, Expectation]]:
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(str(path), None, "", f"invalid YAML: {exc}")]) from exc
    if not isinstance(data, list) or root is None or not isinstance(root, yaml.SequenceNode):
        raise ConfigError([ConfigIssue(str(path), 1, "", "expected a list of {text, category/route, ...}")])
    lines = [node.start_mark.line + 1 for node in root.value]
    try:
        items = TypeAdapter(list[Expectation]).validate_python(data)
    except ValidationError as exc:
        issues = []
        for error in exc.errors():
            index = error["loc"][0] if error["loc"] and isinstance(error["loc"][0], int) else 0
            issues.append(ConfigIssue(str(path), lines[index] if index < len(lines) else None,
                                      format_path(tuple(error["loc"])), error["msg"]))
        raise ConfigError(issues) from exc
    for index, item in enumerate(items):
        if item.category is None and item.route is None:
            raise ConfigError([ConfigIssue(str(path), lines[index], f"[{index}]", "give category or route")])
    return list(zip(lines, items, strict=True))


def run_expectations(config: Config, router: Router, items: list[tuple[int, Expectation]]) -> list[Outcome]:
    outcomes = []
    for line, item in items:
        at = parse_local_time(config, item.at) if item.at else None
        decision = router.classify(item.text, item.group, at)
        first = decision.first
        outcomes.append(Outcome(item, line, decision.category, first.route.id if first else None))
    return outcomes
