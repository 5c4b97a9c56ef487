"""The ``weekly_report:`` section of ``config.yaml``: when the station head gets the weekly summary of the
residents' groups, and its text.

Validation only, like ``schema.py``. This module does not import ``bot.config.schema`` at import time
(``schema.py`` imports this one for ``Config.weekly_report``); the duration parser is looked up when used.

Example::

    weekly_report:
      enabled: true
      weekday: mon        # mon … sun (周一 … 周日 also accepted)
      time: "08:00"       # local time (the config's time zone)
      catch_up: 12h       # if the bot was down at that time, still send it within this long
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from bot.config.templates import template_error

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAYS_ZH = {"一": 0, "二": 1, "三": 2, "四": 3, "五": 4, "六": 5, "日": 6, "天": 6}

DEFAULT_TEXT = (
    "【{{ station.name }}·群工作周报】{{ week.label }}\n"
    "群消息{{ total.messages }}条，活跃居民{{ total.residents }}人；"
    "居民报告{{ total.reports }}起{% if categories %}（{{ categories }}）{% endif %}"
    "{% if total.median_ack %}，接警中位用时{{ total.median_ack }}{% endif %}"
    "{% if total.median_resolve %}，处理中位用时{{ total.median_resolve }}{% endif %}。\n"
    "防范宣传{{ total.prevention }}次（预警{{ total.warnings }}次、民警提示{{ total.officer_posts }}次）。"
    "{% if total.inquiries is not none %}群众咨询{{ total.inquiries }}件，"
    "24小时内答复{{ total.answered_24h }}件。{% endif %}\n"
    "{% if most_active %}最活跃：{{ most_active.name }}（{{ most_active.messages }}条）。{% endif %}"
    "{% if most_reports %}报告最多：{{ most_reports.name }}（{{ most_reports.reports }}起）。{% endif %}"
    "{% if quiet_groups %}本周无人发言：{{ quiet_groups }}。{% endif %}\n"
    "各群明细见管理后台“周报”。"
)


def _duration(value: Any) -> dt.timedelta:
    from bot.config.schema import parse_duration  # here, not at import: schema.py imports this module

    return parse_duration(value)


Duration = Annotated[dt.timedelta, BeforeValidator(_duration)]


def parse_weekday(value: Any) -> str:
    """'mon' … 'sun' (any case), 'monday', 周一 / 星期一 / 礼拜一 … 周日, or ISO 1 … 7 → 'mon' … 'sun'."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 7:
        return WEEKDAYS[value - 1]
    if isinstance(value, str):
        text = value.strip().lower()
        for name in WEEKDAYS:
            if text in (name, {"mon": "monday", "tue": "tuesday", "wed": "wednesday", "thu": "thursday",
                                 "fri": "friday", "sat": "saturday", "sun": "sunday"}[name]):
                return name
        found = re.fullmatch(r"(?:周|星期|礼拜)([一二三四五六日天])", text)
        if found:
            return WEEKDAYS[_WEEKDAYS_ZH[found.group(1)]]
    raise ValueError(f"expected a weekday among {', '.join(WEEKDAYS)} (or 周一 … 周日), got {value!r}")


def parse_clock_time(value: Any) -> dt.time:
    """'HH:MM' (YAML 1.1 reads an unquoted 08:30 as the number 510: accepted too)."""
    if isinstance(value, dt.time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value // 60:02d}:{value % 60:02d}"
    if not isinstance(value, str) or not re.fullmatch(r"\d{1,2}:\d{2}", value.strip()):
        raise ValueError(f"expected a time as 'HH:MM', got {value!r}")
    hours, minutes = (int(part) for part in value.strip().split(":"))
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise ValueError(f"expected a time between 00:00 and 23:59, got {value!r}")
    return dt.time(hours, minutes)


class WeeklyReportConfig(BaseModel):
    """The weekly summary for the station head (officers with role ``supervisor``), sent privately, and kept
    on the admin web's 周报 page. It covers the last full calendar week (Monday 00:00 to Monday 00:00, local
    time) before the moment it is due."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    weekday: Annotated[str, BeforeValidator(parse_weekday)] = Field(
        "mon", description="the day it is sent: mon … sun (or 周一 … 周日)")
    time: Annotated[dt.time, BeforeValidator(parse_clock_time)] = Field(
        dt.time(8, 0), description="local time it is sent, 'HH:MM'")
    catch_up: Duration = Field(
        dt.timedelta(hours=12),
        description="if the bot was not running at that time, it still sends the report this long "
        "afterwards; later, that week's report is skipped")
    text: str = Field(DEFAULT_TEXT, description="the private message (Jinja2, like the texts: section)")

    @field_validator("catch_up")
    @classmethod
    def _positive(cls, value: dt.timedelta) -> dt.timedelta:
        if value <= dt.timedelta(0) or value > dt.timedelta(days=7):
            raise ValueError("expected a duration above 0 and at most 7d")
        return value

    @field_validator("text")
    @classmethod
    def _compiles(cls, source: str) -> str:
        error = template_error(source)
        if error:
            raise ValueError(error)
        return source

    @property
    def weekday_index(self) -> int:
        """0 = Monday … 6 = Sunday."""
        return WEEKDAYS.index(self.weekday)
