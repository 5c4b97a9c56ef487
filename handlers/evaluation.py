"""How each residents' group is doing: the figures a station is evaluated by, per group and period.

Pure queries (plus one helper that asks the puppet service for member lists); the admin web's group pages and
the weekly report both use them, so a figure means the same everywhere.

Per group, over ``[since, until)``:

* **messages**: everything residents and officers said in the group (the bot's own messages are never stored);
* **active residents**: distinct senders who are not officers (by WeChat id); the bot is never among them;
* **share who spoke**: active residents / resident members (members from the puppet service, officers and the
  bot left out); empty when the member count is unknown;
* **prevention posts**: broadcast copies delivered to the group, plus officers' own posts in the group that
  contain an anti-fraud or safety word (:data:`PREVENTION_WORDS`);
* **residents' reports**: incidents opened, by category, with median times to acknowledgement and to
  resolution (of the incidents opened in the period that have been acknowledged / resolved);
* **inquiries**: tickets opened, how many got a first response within 24 hours, and how many are still within
  their 24 hours — only when the inquiry tickets table exists (otherwise ``None``).

Periods (:func:`period_containing`) are calendar days, weeks (Monday first) and months in the config's time
zone; boundaries are half-open, ``since <= t < until``.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import distinct, func, inspect, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config.schema import Config
from models.db import Database
from models.tables import Broadcast, BroadcastDelivery, InboundMessage, Incident

try:  # inquiries arrive with models/tickets.py; until then the inquiry figures stay empty
    from models.tickets import Ticket
except ImportError:  # pragma: no cover - depends on what is installed
    Ticket = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

PREVENTION_WORDS: tuple[str, ...] = ("反诈", "诈骗", "防范", "防骗", "安全提示", "提醒", "警惕")
INQUIRY_WINDOW = timedelta(hours=24)
OTHER = ""  # the row for messages and incidents of rooms not (or no longer) in the config
TOTAL = "*"
PERIOD_KINDS = ("day", "week", "month")
PERIOD_NAMES = {"day": "日", "week": "周", "month": "月"}
WEEKDAY_ZH = "一二三四五六日"
RANK_METRICS = {"messages": ("消息", "条"), "residents": ("活跃居民", "人"), "share": ("发言比例", "%"),
                "reports": ("居民报告", "起"), "prevention": ("防范宣传", "次")}


# -- periods ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Period:
    kind: str  # day, week, month
    first_day: date  # local, inclusive
    last_day: date  # local, inclusive
    start: datetime  # UTC, inclusive: first_day 00:00 local
    end: datetime  # UTC, exclusive: the day after last_day, 00:00 local

    @property
    def label(self) -> str:
        first, last = self.first_day, self.last_day
        if self.kind == "day":
            return f"{first.year}年{first.month}月{first.day}日（周{WEEKDAY_ZH[first.weekday()]}）"
        if self.kind == "month":
            return f"{first.year}年{first.month}月"
        tail = f"{last.month}月{last.day}日"
        if last.year != first.year:
            tail = f"{last.year}年{tail}"
        return f"{first.year}年{first.month}月{first.day}日—{tail}"


def local_midnight(config: Config, day: date) -> datetime:
    """``day`` 00:00 in the config's zone, as UTC."""
    return datetime.combine(day, time(0), tzinfo=config.zone).astimezone(UTC)


def week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())


def period_of_day(config: Config, kind: str, day: date) -> Period:
    """The calendar day, week (Monday to Sunday) or month that contains the local date ``day``."""
    if kind == "day":
        first, last = day, day
    elif kind == "week":
        first = week_start(day)
        last = first + timedelta(days=6)
    elif kind == "month":
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        last = following - timedelta(days=1)
    else:
        raise ValueError(f"unknown period {kind!r}; expected one of {', '.join(PERIOD_KINDS)}")
    return Period(kind, first, last, local_midnight(config, first),
                  local_midnight(config, last + timedelta(days=1)))


def period_containing(config: Config, kind: str, at: datetime) -> Period:
    return period_of_day(config, kind, at.astimezone(config.zone).date())


def neighbour(config: Config, period: Period, steps: int) -> Period:
    """The period ``steps`` before (negative) or after (positive) ``period``, of the same kind."""
    if steps == 0:
        return period
    if period.kind == "month":
        month = period.first_day.year * 12 + period.first_day.month - 1 + steps
        return period_of_day(config, "month", date(month // 12, month % 12 + 1, 1))
    days = 1 if period.kind == "day" else 7
    return period_of_day(config, period.kind, period.first_day + timedelta(days=days * steps))


# -- figures ---------------------------------------------------------------------------------------------
@dataclass
class GroupFigures:
    group_id: str
    name: str
    messages: int = 0
    residents: int = 0
    members: int | None = None  # resident members (puppet service); None: unknown
    share: float | None = None  # residents / members
    reports: int = 0
    by_category: Counter[str] = field(default_factory=Counter)
    ack_seconds: list[float] = field(default_factory=list)
    resolve_seconds: list[float] = field(default_factory=list)
    warnings: int = 0  # broadcast copies delivered to the group
    officer_posts: int = 0  # officers' own prevention posts in the group
    inquiries: int | None = None  # None: no inquiry tickets table
    answered_24h: int | None = None
    inquiries_pending: int | None = None  # unanswered, but still within their 24 hours
    by_hour: list[int] = field(default_factory=lambda: [0] * 24)  # reports per local hour of day

    @property
    def median_ack(self) -> float | None:
        return statistics.median(self.ack_seconds) if self.ack_seconds else None

    @property
    def median_resolve(self) -> float | None:
        return statistics.median(self.resolve_seconds) if self.resolve_seconds else None

    @property
    def prevention(self) -> int:
        return self.warnings + self.officer_posts

    def metric(self, name: str) -> float | None:
        """A ranking metric (see :data:`RANK_METRICS`); the share in percent."""
        if name == "share":
            return None if self.share is None else round(self.share * 100, 1)
        return float(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as kept with a weekly report."""
        return {
            "group_id": self.group_id, "name": self.name, "messages": self.messages,
            "residents": self.residents, "members": self.members, "share": self.share,
            "reports": self.reports,
            "by_category": dict(sorted(self.by_category.items())),
            "median_ack_seconds": self.median_ack, "median_resolve_seconds": self.median_resolve,
            "warnings": self.warnings, "officer_posts": self.officer_posts, "prevention": self.prevention,
            "inquiries": self.inquiries, "answered_24h": self.answered_24h,
            "inquiries_pending": self.inquiries_pending,
        }


@dataclass
class Evaluation:
    since: datetime
    until: datetime
    groups: list[GroupFigures]  # configured groups in config order, then "其他群" if any
    total: GroupFigures
    inquiries_available: bool

    @property
    def by_hour(self) -> list[int]:
        return self.total.by_hour

    def group(self, group_id: str) -> GroupFigures | None:
        return next((g for g in self.groups if g.group_id == group_id), None)

    def ranking(self, metric: str) -> list[tuple[GroupFigures, float]]:
        """Configured groups by ``metric``, highest first (ties by config order); groups without a value
        (an unknown share) are left out."""
        if metric not in RANK_METRICS:
            raise ValueError(f"unknown metric {metric!r}")
        rows = [(g, g.metric(metric)) for g in self.groups if g.group_id != OTHER]
        ranked = [(g, value) for g, value in rows if value is not None]
        return sorted(ranked, key=lambda item: -item[1])


async def _table_exists(session: AsyncSession, name: str) -> bool:
    connection = await session.connection()
    return bool(await connection.run_sync(lambda sync: inspect(sync).has_table(name)))


def _delivery_station(station_id: str) -> Any:
    """Deliveries of this station's groups: by the delivery's own station when it records one (district
    warnings are sent by each station's account), else by the broadcast's station."""
    column = getattr(BroadcastDelivery, "station_id", None)
    if column is not None:
        return column == station_id
    return BroadcastDelivery.broadcast_id.in_(select(Broadcast.id).where(Broadcast.station_id == station_id))


async def evaluate(
    db: Database,
    config: Config,
    since: datetime,
    until: datetime,
    *,
    member_counts: dict[str, int] | None = None,
    now: datetime | None = None,
    words: Iterable[str] = PREVENTION_WORDS,
) -> Evaluation:
    """Every figure for every configured group (and a station total) over ``[since, until)``.

    ``member_counts``: resident members per group id (see :func:`puppet_member_counts`); groups missing from
    it get no share. ``now`` (default ``until``) decides which unanswered inquiries are still within 24 hours.
    """
    station_id = config.station.id
    now = now or until
    officers = [o.wechat_id for o in config.officers]
    needles = [w for w in words if w]
    in_period = (InboundMessage.account == station_id, InboundMessage.room_id.is_not(None),
                 InboundMessage.received_at >= since, InboundMessage.received_at < until)
    residents = (*in_period, InboundMessage.sender_id.not_in(officers))
    async with db.session() as s:
        messages = (await s.execute(select(InboundMessage.group_id, func.count())
                                    .where(*in_period).group_by(InboundMessage.group_id))).all()
        distinct_senders = func.count(distinct(InboundMessage.sender_id))
        senders = (await s.execute(select(InboundMessage.group_id, distinct_senders)
                                   .where(*residents).group_by(InboundMessage.group_id))).all()
        all_residents = int(await s.scalar(
            select(func.count(distinct(InboundMessage.sender_id))).where(*residents)) or 0)
        incidents = (await s.execute(
            select(Incident.group_id, Incident.category, Incident.created_at, Incident.acknowledged_at,
                   Incident.resolved_at)
            .where(Incident.station_id == station_id, Incident.created_at >= since,
                   Incident.created_at < until)
        )).all()
        warnings = (await s.execute(
            select(BroadcastDelivery.group_id, func.count())
            .where(_delivery_station(station_id), BroadcastDelivery.status == "sent",
                   BroadcastDelivery.sent_at >= since, BroadcastDelivery.sent_at < until)
            .group_by(BroadcastDelivery.group_id))).all()
        posts = []
        if officers and needles:
            posts = (await s.execute(
                select(InboundMessage.group_id, func.count())
                .where(*in_period, InboundMessage.sender_id.in_(officers),
                       or_(*[InboundMessage.text.contains(w, autoescape=True) for w in needles]))
                .group_by(InboundMessage.group_id))).all()
        tickets: list[Any] | None = None
        if Ticket is not None and await _table_exists(s, Ticket.__tablename__):
            tickets = list((await s.execute(
                select(Ticket.group_id, Ticket.created_at, Ticket.responded_at)
                .where(Ticket.station_id == station_id, Ticket.created_at >= since, Ticket.created_at < until)
            )).all())

    def blank(group_id: str, name: str) -> GroupFigures:
        figures = GroupFigures(group_id, name)
        if tickets is not None:
            figures.inquiries = figures.answered_24h = figures.inquiries_pending = 0
        return figures

    groups = {g.id: blank(g.id, g.display_name) for g in config.groups}
    total = blank(TOTAL, "全站合计")
    total.residents = all_residents

    def row(group_id: str | None) -> GroupFigures:
        key = group_id if group_id in groups else OTHER
        if key not in groups:
            groups[key] = blank(OTHER, "其他群")
        return groups[key]

    for group_id, count in messages:
        row(group_id).messages += count
        total.messages += count
    for group_id, count in senders:
        row(group_id).residents += count  # "其他群" adds up rooms: a person in two of them counts twice there
    for group_id, category, created, acked, resolved in incidents:
        hour = created.astimezone(config.zone).hour
        for figures in (row(group_id), total):
            figures.reports += 1
            figures.by_category[category] += 1
            figures.by_hour[hour] += 1
            if acked is not None:
                figures.ack_seconds.append((acked - created).total_seconds())
            if resolved is not None:
                figures.resolve_seconds.append((resolved - created).total_seconds())
    for group_id, count in warnings:
        row(group_id).warnings += count
        total.warnings += count
    for group_id, count in posts:
        row(group_id).officer_posts += count
        total.officer_posts += count
    for group_id, created, responded in tickets or []:
        for figures in (row(group_id), total):
            figures.inquiries = (figures.inquiries or 0) + 1
            if responded is not None and responded - created <= INQUIRY_WINDOW:
                figures.answered_24h = (figures.answered_24h or 0) + 1
            elif responded is None and now - created < INQUIRY_WINDOW:
                figures.inquiries_pending = (figures.inquiries_pending or 0) + 1

    counts = member_counts or {}
    known = [g for g in config.groups if g.id in counts]
    for group in known:
        figures = groups[group.id]
        figures.members = int(counts[group.id])
        figures.share = figures.residents / figures.members if figures.members > 0 else None
    if config.groups and len(known) == len(config.groups):
        # the whole station: spoken memberships over memberships (a resident of two groups counts in each)
        total.members = sum(groups[g.id].members or 0 for g in config.groups)
        spoke = sum(groups[g.id].residents for g in config.groups)
        total.share = spoke / total.members if total.members > 0 else None

    ordered = [groups[g.id] for g in config.groups]
    if OTHER in groups:
        ordered.append(groups[OTHER])
    return Evaluation(since, until, ordered, total, tickets is not None)


async def evaluate_period(db: Database, config: Config, period: Period, *, now: datetime,
                          member_counts: dict[str, int] | None = None) -> Evaluation:
    """:func:`evaluate` over a calendar period. The current one holds everything so far: its ``until`` is set
    to ``now`` for display (nothing after ``now`` exists yet, and what happened at ``now`` counts)."""
    evaluation = await evaluate(db, config, period.start, period.end, member_counts=member_counts, now=now)
    evaluation.until = min(period.end, max(now, period.start))
    return evaluation


# -- trends ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeekPoint:
    week_start: date  # local Monday
    messages: int
    reports: int

    @property
    def label(self) -> str:
        return f"{self.week_start.month}/{self.week_start.day}"


async def weekly_trend(db: Database, config: Config, now: datetime, *, weeks: int = 8,
                       group_id: str | None = None) -> list[WeekPoint]:
    """Messages and residents' reports per calendar week, the last ``weeks`` weeks up to the one containing
    ``now`` (so far), oldest first; for one group, or the whole station."""
    station_id = config.station.id
    this_week = week_start(now.astimezone(config.zone).date())
    points = []
    async with db.session() as s:
        for back in range(weeks - 1, -1, -1):
            first = this_week - timedelta(weeks=back)
            start, end = local_midnight(config, first), local_midnight(config, first + timedelta(days=7))
            message_query = select(func.count()).select_from(InboundMessage).where(
                InboundMessage.account == station_id, InboundMessage.room_id.is_not(None),
                InboundMessage.received_at >= start, InboundMessage.received_at < end)
            report_query = select(func.count()).select_from(Incident).where(
                Incident.station_id == station_id, Incident.created_at >= start, Incident.created_at < end)
            if group_id is not None:
                message_query = message_query.where(InboundMessage.group_id == group_id)
                report_query = report_query.where(Incident.group_id == group_id)
            points.append(WeekPoint(first, int(await s.scalar(message_query) or 0),
                                    int(await s.scalar(report_query) or 0)))
    return points


# -- members ---------------------------------------------------------------------------------------------
async def puppet_member_counts(connection: Any, config: Config, *, timeout: float = 5.0,
                               parallel: int = 8) -> dict[str, int]:
    """Resident members per group id, asked of the puppet service (``connection._bot.puppet.room_members``):
    every member but the bot and the config's officers. A group whose room cannot be asked (not connected, no
    room id, an error, too slow) is left out, so its share stays empty."""
    bot = getattr(connection, "_bot", None)
    puppet = getattr(bot, "puppet", None)
    if puppet is None:
        return {}
    not_residents = {o.wechat_id for o in config.officers}
    self_id = getattr(connection, "self_id", None)
    if self_id:
        not_residents.add(self_id)
    limit = asyncio.Semaphore(parallel)

    async def one(room_id: str) -> int | None:
        async with limit:
            try:
                async with asyncio.timeout(timeout):
                    members = await puppet.room_members(room_id)
            except Exception as exc:  # any failure only means "unknown"
                log.info("member list of %s unavailable: %s: %s", room_id, type(exc).__name__, exc)
                return None
        return sum(1 for member in members or [] if member not in not_residents)

    asked = [g for g in config.groups if g.room_id]
    found = await asyncio.gather(*(one(g.room_id or "") for g in asked))
    return {g.id: count for g, count in zip(asked, found, strict=True) if count is not None}
