"""Per-group figures over a period, from ``inbound_messages`` and ``incidents``, and one SVG chart."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aiohttp import web
from sqlalchemy import distinct, func, select

from bot.config.schema import Config
from bot.web.svg import bar_chart
from bot.web.views_base import category_label, render, station
from models.db import Database
from models.tables import InboundMessage, Incident

PERIODS = {"day": ("近24小时", timedelta(days=1)), "week": ("近7天", timedelta(days=7)),
           "month": ("近30天", timedelta(days=30))}
OTHER = ""  # rows for messages/incidents of rooms not (or no longer) in the config


def setup(router: web.UrlDispatcher) -> None:
    router.add_get("/groups", groups_page)


@dataclass
class GroupFigures:
    group_id: str
    name: str
    messages: int = 0
    residents: int = 0
    reports: int = 0
    by_category: Counter[str] = field(default_factory=Counter)
    ack_seconds: list[float] = field(default_factory=list)
    resolve_seconds: list[float] = field(default_factory=list)

    @property
    def median_ack(self) -> float | None:
        return statistics.median(self.ack_seconds) if self.ack_seconds else None

    @property
    def median_resolve(self) -> float | None:
        return statistics.median(self.resolve_seconds) if self.resolve_seconds else None


@dataclass
class PeriodFigures:
    groups: list[GroupFigures]
    total: GroupFigures
    by_hour: list[int]  # incidents opened per local hour of day, 0..23


async def period_figures(db: Database, config: Config, since: datetime, until: datetime) -> PeriodFigures:
    """Messages, distinct resident senders (officers excluded), incidents opened, by category, and median
    times to acknowledgement and resolution, per configured group and for the whole station."""
    station_id = config.station.id
    officers = [o.wechat_id for o in config.officers]
    groups = {g.id: GroupFigures(g.id, g.display_name) for g in config.groups}
    total = GroupFigures("*", "全站合计")
    in_period = (InboundMessage.account == station_id, InboundMessage.room_id.is_not(None),
                 InboundMessage.received_at >= since, InboundMessage.received_at <= until)
    residents = (*in_period, InboundMessage.sender_id.not_in(officers))
    async with db.session() as s:
        messages = (await s.execute(select(InboundMessage.group_id, func.count())
                                    .where(*in_period).group_by(InboundMessage.group_id))).all()
        distinct_senders = func.count(distinct(InboundMessage.sender_id))
        senders = (await s.execute(select(InboundMessage.group_id, distinct_senders)
                                   .where(*residents).group_by(InboundMessage.group_id))).all()
        total.residents = int(await s.scalar(
            select(func.count(distinct(InboundMessage.sender_id))).where(*residents)) or 0)
        incidents = (await s.execute(
            select(Incident.group_id, Incident.group_name, Incident.category, Incident.created_at,
                   Incident.acknowledged_at, Incident.resolved_at)
            .where(Incident.station_id == station_id, Incident.created_at >= since,
                   Incident.created_at <= until)
        )).all()

    def row(group_id: str | None, name: str = "其他群") -> GroupFigures:
        key = group_id if group_id in groups else OTHER
        if key not in groups:
            groups[key] = GroupFigures(OTHER, name)
        return groups[key]

    for group_id, count in messages:
        row(group_id).messages += count
        total.messages += count
    for group_id, count in senders:
        row(group_id).residents += count  # "其他群" adds up rooms: a person in two of them counts twice there
    by_hour = [0] * 24
    for group_id, _name, category, created, acked, resolved in incidents:
        for figures in (row(group_id), total):
            figures.reports += 1
            figures.by_category[category] += 1
            if acked is not None:
                figures.ack_seconds.append((acked - created).total_seconds())
            if resolved is not None:
                figures.resolve_seconds.append((resolved - created).total_seconds())
        by_hour[created.astimezone(config.zone).hour] += 1
    ordered = [groups[g.id] for g in config.groups]
    if OTHER in groups:
        ordered.append(groups[OTHER])
    return PeriodFigures(ordered, total, by_hour)


async def groups_page(request: web.Request) -> web.StreamResponse:
    st = station(request)
    config = st.current.config
    period = request.query.get("period", "day")
    if period not in PERIODS:
        period = "day"
    label, span = PERIODS[period]
    until = st.now()
    since = until - span
    figures = await period_figures(st.db, config, since, until)
    chart = bar_chart(figures.by_hour, [f"{h}时" for h in range(24)], title=f"{label}各时段新增警情（起）",
                      unit="起", label_every=2)

    def categories(row: GroupFigures) -> list[tuple[str, int]]:
        ordered = sorted(row.by_category.items(), key=lambda item: (-item[1], item[0]))  # stable on ties
        return [(category_label(config, c), n) for c, n in ordered]

    return render(request, "groups.html", nav="groups", title="群统计", figures=figures, period=period,
                  periods=[(key, text) for key, (text, _) in PERIODS.items()], period_label=label,
                  since=since, until=until, chart=chart, categories=categories)
