"""The shape of ``config.yaml``: pydantic models, validation only, no runtime state.

Runtime objects (the compiled router, the roster) are built from a validated
:class:`Config` elsewhere, so that validation errors can name a line before
anything runs.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import datetime, time
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Role(StrEnum):
    community = "community"
    duty = "duty"
    supervisor = "supervisor"


class Severity(StrEnum):
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class DatabaseConfig(Strict):
    url: str = "sqlite+aiosqlite:///data/gonghao.db"

    @field_validator("url")
    @classmethod
    def _async_driver(cls, url: str) -> str:
        if not (url.startswith("sqlite+aiosqlite://") or url.startswith("postgresql+asyncpg://")):
            raise ValueError(
                "expected an async SQLAlchemy URL: 'sqlite+aiosqlite:///path/to/file.db' "
                "or 'postgresql+asyncpg://user@host:5432/dbname'"
            )
        return url


class StationConfig(Strict):
    id: Identifier
    name: str = Field(min_length=1)


class OfficerConfig(Strict):
    id: Identifier
    name: str = Field(min_length=1)
    wechat_id: str = Field(min_length=1, description="the officer's WeChat contact id")
    role: Role
    phone: str | None = None


class GroupConfig(Strict):
    id: Identifier
    name: str | None = None
    room_id: str | None = None
    topic: str | None = None
    officer: Identifier | None = Field(None, description="id of the group's own community officer")

    @model_validator(mode="after")
    def _matched_somehow(self) -> GroupConfig:
        if not self.room_id and not self.topic:
            raise ValueError("a group needs room_id or topic (the exact room name) to be recognised")
        return self

    @property
    def display_name(self) -> str:
        return self.name or self.topic or self.id


def _parse_hhmm(value: Any) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, int):  # YAML 1.1 reads unquoted 08:30 as a sexagesimal int
        value = f"{value // 60:02d}:{value % 60:02d}"
    if not isinstance(value, str) or not re.fullmatch(r"\d{1,2}:\d{2}", value.strip()):
        raise ValueError(f"expected a time as 'HH:MM', got {value!r}")
    hours, minutes = (int(part) for part in value.strip().split(":"))
    if hours == 24 and minutes == 0:
        return time(23, 59, 59, 999999)
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise ValueError(f"expected a time between 00:00 and 24:00, got {value!r}")
    return time(hours, minutes)


class WeeklyWindow(Strict):
    """Weekdays and a time range; ``end`` earlier than ``start`` means it runs past midnight."""

    days: list[str] = Field(default_factory=lambda: list(WEEKDAYS))
    start: time
    end: time

    @field_validator("start", "end", mode="before")
    @classmethod
    def _time(cls, value: Any) -> time:
        return _parse_hhmm(value)

    @field_validator("days", mode="before")
    @classmethod
    def _days(cls, value: Any) -> list[str]:
        if isinstance(value, str):
            value = [value]
        days: list[str] = []
        for day in value:
            day = str(day).strip().lower()[:3]
            if day in ("dai", "all", "eve"):
                days.extend(WEEKDAYS)
            elif day in WEEKDAYS:
                days.append(day)
            else:
                raise ValueError(f"expected weekdays among {', '.join(WEEKDAYS)} or 'daily', got {day!r}")
        return days

    def covers(self, local: datetime) -> bool:
        """Whether a local time falls in the window; past-midnight hours belong to the day they started."""
        now = local.time()
        today = WEEKDAYS[local.weekday()]
        if self.start <= self.end:
            return today in self.days and self.start <= now < self.end
        yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
        return (today in self.days and now >= self.start) or (yesterday in self.days and now < self.end)


class ShiftConfig(WeeklyWindow):
    officer: Identifier


class MatchConfig(Strict):
    any: list[str] = Field(default_factory=list)
    all: list[list[str]] = Field(default_factory=list)
    regex: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)

    @field_validator("any", "exclude")
    @classmethod
    def _non_empty_words(cls, words: list[str]) -> list[str]:
        for word in words:
            if not str(word).strip():
                raise ValueError("keywords must not be empty")
        return words

    @field_validator("all")
    @classmethod
    def _groups(cls, groups: list[list[str]]) -> list[list[str]]:
        for group in groups:
            if not group or any(not str(word).strip() for word in group):
                raise ValueError("each all-of group is a non-empty list of non-empty keywords")
        return groups

    @field_validator("regex")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return patterns

    @property
    def is_empty(self) -> bool:
        return not (self.any or self.all or self.regex)


class RouteConfig(Strict):
    id: Identifier
    category: Identifier | None = None
    severity: Severity | None = None
    match: MatchConfig = Field(default_factory=MatchConfig)
    groups: list[Identifier] = Field(default_factory=list, description="limit to these groups; empty = all")
    active: list[WeeklyWindow] = Field(default_factory=list, description="only at these times; empty = always")
    dedup_minutes: int = Field(
        30, ge=0, le=7 * 24 * 60,
        description="a report in the same group and route within this many minutes of an open incident joins it",
    )
    reply: str | None = None
    ping: str | None = None
    continue_: bool = Field(False, alias="continue")
    routes: list[RouteConfig] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _matches_something(self) -> RouteConfig:
        if self.match.is_empty and not self.routes:
            raise ValueError("a route needs match.any, match.all or match.regex (or child routes)")
        return self


class TextsConfig(Strict):
    """Everything the bot says that is not a route's own reply; Jinja2 templates."""

    ping: str = (
        "【警情 #{{ incident.id }}】{{ route.category_label }} {{ incident.severity }}\n"
        "群：{{ group.name }}\n"
        "居民：{{ resident.name }}\n"
        "时间：{{ message.time }}\n"
        "内容：{{ message.text }}\n"
        "请回复“收到 {{ incident.id }}”确认接警。"
    )
    default_reply: str = "【{{ station.name }}】已收到您的报告，值班民警已接报，请保持电话畅通。"
    joined_reply: str = (
        "【{{ station.name }}】收到，这件事已有居民报告（#{{ incident.id }}），民警已接报在处理，"
        "请注意安全，有新情况请继续在群里说。"
    )
    ack_group: str = "【{{ station.name }}】{{ officer.name }}已接警（#{{ incident.id }}），正在处理，请大家注意安全。"
    ack_officer: str = "已确认接警 #{{ incident.id }}（{{ group.name }}）。"
    ack_nothing_open: str = "您当前没有待确认的警情。"
    ack_unknown_incident: str = "没有找到警情 #{{ number }}，或它不属于本所。"
    ack_already: str = "警情 #{{ incident.id }} 已由{{ acked_by }}于{{ acked_at }}确认。"
    not_an_officer: str = "您好，此账号仅用于接收民警指令。如需报警请拨打110，或在所在小区群里说明情况。"
    unknown_command: str = "可用指令：\n收到 —— 确认最近一条待确认警情\n收到 12 —— 确认12号警情"
    no_one_on_duty: str = "【{{ station.name }}】当前没有排班民警，已转所领导。"


class Config(Strict):
    timezone: str = "Asia/Shanghai"
    data_dir: str = "data"
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    station: StationConfig
    officers: list[OfficerConfig] = Field(min_length=1)
    groups: list[GroupConfig] = Field(default_factory=list)
    shifts: list[ShiftConfig] = Field(default_factory=list)
    categories: dict[Identifier, str] = Field(default_factory=dict, description="category id -> Chinese label")
    routes: list[RouteConfig] = Field(default_factory=list)
    texts: TextsConfig = Field(default_factory=TextsConfig)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"expected an IANA time zone such as 'Asia/Shanghai', got {zone!r}") from exc
        return zone

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def officer(self, officer_id: str) -> OfficerConfig | None:
        return next((officer for officer in self.officers if officer.id == officer_id), None)


def iter_routes(
    routes: list[RouteConfig], prefix: tuple[str | int, ...] = ("routes",)
) -> list[tuple[tuple[str | int, ...], RouteConfig]]:
    """Every route in the tree with its path in the YAML, depth first."""
    found: list[tuple[tuple[str | int, ...], RouteConfig]] = []
    for index, route in enumerate(routes):
        path = (*prefix, index)
        found.append((path, route))
        found.extend(iter_routes(route.routes, (*path, "routes")))
    return found


Path = tuple[str | int, ...]


def reference_errors(config: Config) -> list[tuple[Path, str]]:
    """Cross-references pydantic cannot check field by field: ids that must exist or be unique."""
    errors: list[tuple[Path, str]] = []
    errors += _duplicates([officer.id for officer in config.officers], "officers", "id")
    errors += _duplicates([officer.wechat_id for officer in config.officers], "officers", "wechat_id")
    errors += _duplicates([group.id for group in config.groups], "groups", "id")
    known_officers = {officer.id for officer in config.officers}
    known_groups = {group.id for group in config.groups}
    for index, group in enumerate(config.groups):
        if group.officer and group.officer not in known_officers:
            errors.append(_unknown(("groups", index, "officer"), group.officer, "officer", known_officers))
    for index, shift in enumerate(config.shifts):
        if shift.officer not in known_officers:
            errors.append(_unknown(("shifts", index, "officer"), shift.officer, "officer", known_officers))
    seen_routes: set[str] = set()
    for path, route in iter_routes(config.routes):
        if route.id in seen_routes:
            errors.append(((*path, "id"), f"duplicate route id {route.id!r}"))
        seen_routes.add(route.id)
        for g_index, group_id in enumerate(route.groups):
            if group_id not in known_groups:
                errors.append(_unknown((*path, "groups", g_index), group_id, "group", known_groups))
    return errors


def _duplicates(values: list[str], section: str, field: str) -> list[tuple[Path, str]]:
    seen: set[str] = set()
    errors: list[tuple[Path, str]] = []
    for index, value in enumerate(values):
        if value in seen:
            errors.append(((section, index, field), f"duplicate {field} {value!r}"))
        seen.add(value)
    return errors


def _unknown(path: Path, value: str, kind: str, known: set[str]) -> tuple[Path, str]:
    choices = ", ".join(sorted(known)) or "(none defined)"
    return path, f"unknown {kind} {value!r}; expected one of: {choices}"
