"""The inquiry SLA report (``python main.py sla``): per group and in all, how many residents asked, how fast
they got a first response and a result (median, p95), how many were answered from the knowledge base, and
which tickets broke the promise of a response within the SLA."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config.schema import Config
from handlers.tickets import settings_of
from models.tickets import Ticket


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default): p50 of [1, 2, 3, 4] is 2.5."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class BreachItem:
    ticket_id: int
    group_name: str
    resident_name: str
    assignee: str
    assignee_name: str
    text: str
    created_at: datetime
    due_at: datetime
    responded_at: datetime | None


@dataclass
class SlaLine:
    key: str
    label: str
    inquiries: int = 0
    responded: int = 0
    closed: int = 0
    kb_answered: int = 0
    response_seconds: list[float] = field(default_factory=list)
    result_seconds: list[float] = field(default_factory=list)
    breaches: list[int] = field(default_factory=list)

    @property
    def unanswered(self) -> int:
        return self.inquiries - self.responded

    @property
    def response_median(self) -> float | None:
        return percentile(self.response_seconds, 50)

    @property
    def response_p95(self) -> float | None:
        return percentile(self.response_seconds, 95)

    @property
    def result_median(self) -> float | None:
        return percentile(self.result_seconds, 50)

    @property
    def result_p95(self) -> float | None:
        return percentile(self.result_seconds, 95)

    def add(self, ticket: Ticket, breached: bool) -> None:
        self.inquiries += 1
        if ticket.kb_entry:
            self.kb_answered += 1
        if ticket.responded_at is not None:
            self.responded += 1
            self.response_seconds.append((ticket.responded_at - ticket.created_at).total_seconds())
        if ticket.closed_at is not None:
            self.closed += 1
            self.result_seconds.append((ticket.closed_at - ticket.created_at).total_seconds())
        if breached:
            self.breaches.append(ticket.id)


@dataclass
class SlaReport:
    station_id: str
    station_name: str
    since: datetime
    until: datetime
    now: datetime
    sla: timedelta
    timezone: str
    total: SlaLine
    groups: list[SlaLine]
    officers: list[SlaLine]
    breaches: list[BreachItem]


def is_breached(ticket: Ticket, now: datetime) -> bool:
    """No first response by the deadline: answered late, or still unanswered past it (as of ``now``)."""
    if ticket.breached:
        return True
    return (ticket.responded_at or now) > ticket.due_at


async def sla_report(session: AsyncSession, config: Config, *, since: datetime, until: datetime,
                     now: datetime, station_id: str | None = None) -> SlaReport:
    """Inquiries asked in [since, until): per group and per assignee, how many, how fast the first response
    (median, p95), how fast the result, and which broke the promise (judged as of ``now``)."""
    station_id = station_id or config.station.id
    tickets = (await session.scalars(
        select(Ticket).where(Ticket.station_id == station_id, Ticket.created_at >= since,
                             Ticket.created_at < until)
        .order_by(Ticket.id))).all()
    total = SlaLine("all", "合计")
    groups: dict[str, SlaLine] = {}
    officers: dict[str, SlaLine] = {}
    breaches: list[BreachItem] = []
    for ticket in tickets:
        breached = is_breached(ticket, now)
        total.add(ticket, breached)
        group_key = ticket.group_id or ticket.room_id or ""
        groups.setdefault(group_key, SlaLine(group_key, ticket.group_name or group_key)).add(ticket, breached)
        officer = config.officer(ticket.assignee)
        officer_name = officer.name if officer else ticket.assignee
        officers.setdefault(ticket.assignee, SlaLine(ticket.assignee, officer_name)).add(ticket, breached)
        if breached:
            breaches.append(BreachItem(ticket.id, ticket.group_name, ticket.resident_name, ticket.assignee,
                                       officer_name, ticket.text, ticket.created_at, ticket.due_at,
                                       ticket.responded_at))
    name = config.station.name if station_id == config.station.id else station_id
    return SlaReport(station_id, name, since, until, now, settings_of(config).sla, config.timezone, total,
                     sorted(groups.values(), key=lambda line: line.label),
                     sorted(officers.values(), key=lambda line: line.label), breaches)


async def load_sla_report(config: Config, *, since: datetime, until: datetime, now: datetime,
                          station_id: str | None = None, database_url: str | None = None) -> SlaReport:
    """Open the config's database (or ``database_url``) and build the report; for ``main.py sla``.

    Raises ``models.migrate.SchemaOutdated`` for a database behind the code (``main.py db upgrade`` first);
    a fresh one gets the schema through the migrations, as the bot would at start, and reports nothing."""
    from models.db import Database
    from models.migrate import ensure_current

    database = Database(database_url or config.database.url)
    try:
        await ensure_current(database)
        async with database.session() as session:
            return await sla_report(session, config, since=since, until=until, now=now, station_id=station_id)
    finally:
        await database.close()


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes = round(seconds / 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days}天{hours}小时" if hours else f"{days}天"
    if hours:
        return f"{hours}小时{minutes}分" if minutes else f"{hours}小时"
    return f"{minutes}分"


def _line_text(line: SlaLine) -> str:
    numbers = " ".join(f"#{n}" for n in line.breaches)
    breaches = f"超时 {len(line.breaches)}" + (f"（{numbers}）" if numbers else "")
    return (f"咨询 {line.inquiries}，已答复 {line.responded}，未答复 {line.unanswered}，已办结 {line.closed}，"
            f"公号自动答复 {line.kb_answered}；首次答复 中位 {format_duration(line.response_median)} / "
            f"P95 {format_duration(line.response_p95)}；办结 中位 {format_duration(line.result_median)} / "
            f"P95 {format_duration(line.result_p95)}；{breaches}")


def format_sla_report(report: SlaReport) -> str:
    """The text ``main.py sla`` prints (Chinese: it is read by the station's leadership)."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(report.timezone)

    def when(at: datetime) -> str:
        return at.astimezone(zone).strftime("%Y-%m-%d %H:%M")

    hours = report.sla.total_seconds() / 3600
    lines = [
        f"居民咨询答复时效 {report.station_name}（{report.station_id}）",
        f"统计区间 {when(report.since)} — {when(report.until)}，承诺时限 {hours:g} 小时，统计时间 {when(report.now)}",
        "",
        f"合计：{_line_text(report.total)}",
    ]
    if report.total.inquiries == 0:
        lines.append("（区间内没有居民咨询）")
        return "\n".join(lines)
    lines += ["", "按群："]
    lines += [f"  {line.label}：{_line_text(line)}" for line in report.groups]
    lines += ["", "按负责民警："]
    lines += [f"  {line.label}：{_line_text(line)}" for line in report.officers]
    lines += ["", f"超时明细（{len(report.breaches)} 件）：" if report.breaches else "超时明细：无"]
    for item in report.breaches:
        if item.responded_at is None:
            answered = f"至今未答复（已超时 {format_duration((report.now - item.due_at).total_seconds())}）"
        else:
            answered = (f"{when(item.responded_at)} 答复（晚 "
                        f"{format_duration((item.responded_at - item.due_at).total_seconds())}）")
        text = item.text if len(item.text) <= 40 else item.text[:40] + "…"
        lines.append(f"  #{item.ticket_id} {item.group_name} {item.resident_name} {when(item.created_at)} 提问，"
                     f"{answered}，负责 {item.assignee_name}：{text}")
    return "\n".join(lines)
