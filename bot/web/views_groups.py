"""The groups pages: every group's figures over a calendar day, week or month (``handlers.evaluation``), a
ranking, reports by hour of day, and one group's page with its 8-week trend. Charts are server-side SVG."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

from aiohttp import web

from bot.config.schema import Config
from bot.web.svg import bar_chart, ranking_chart, trend_chart
from bot.web.views_base import category_label, gonghao, render, station
from handlers.evaluation import (
    PERIOD_KINDS,
    PERIOD_NAMES,
    RANK_METRICS,
    GroupFigures,
    Period,
    evaluate_period,
    neighbour,
    period_of_day,
    puppet_member_counts,
    weekly_trend,
)

PERIOD_TABS = {"day": "按日", "week": "按周", "month": "按月"}
CURRENT = {"day": "今天", "week": "本周", "month": "本月"}
TREND_WEEKS = 8


def setup(router: web.UrlDispatcher) -> None:
    router.add_get("/groups", groups_page)
    router.add_get(r"/groups/{group_id:[A-Za-z0-9_.-]{1,64}}", group_page)


def _period(request: web.Request, config: Config, now: datetime) -> Period:
    """``?period=day|week|month`` (default day) and ``?date=YYYY-MM-DD`` (any day in it; default today)."""
    kind = request.query.get("period", "day")
    if kind not in PERIOD_KINDS:
        kind = "day"
    today = now.astimezone(config.zone).date()
    try:
        day = date.fromisoformat(request.query.get("date", ""))
    except ValueError:
        day = today
    day = min(max(day, date(2000, 1, 1)), today)  # the future has no figures yet
    return period_of_day(config, kind, day)


def _navigation(config: Config, period: Period, now: datetime, path: str) -> dict[str, object]:
    today = now.astimezone(config.zone).date()
    before, after = neighbour(config, period, -1), neighbour(config, period, 1)
    current = period.first_day <= today <= period.last_day
    return {
        "period": period.kind,
        "periods": [(key, PERIOD_TABS[key], f"{path}?period={key}&date={period.first_day.isoformat()}")
                    for key in PERIOD_KINDS],
        "previous": f"{path}?period={period.kind}&date={before.first_day.isoformat()}",
        "next": (None if after.first_day > today
                 else f"{path}?period={period.kind}&date={after.first_day.isoformat()}"),
        "current_link": None if current else f"{path}?period={period.kind}",
        "current_label": CURRENT[period.kind],
        "period_label": period.label + (f"（{CURRENT[period.kind]}，截至当前）" if current else ""),
        "period_name": PERIOD_NAMES[period.kind],
    }


def _categories(config: Config) -> Callable[[GroupFigures], list[tuple[str, int]]]:
    def categories(row: GroupFigures) -> list[tuple[str, int]]:
        ordered = sorted(row.by_category.items(), key=lambda item: (-item[1], item[0]))  # stable on ties
        return [(category_label(config, c), n) for c, n in ordered]

    return categories


def share_text(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


async def groups_page(request: web.Request) -> web.StreamResponse:
    st = station(request)
    config = st.current.config
    now = st.now()
    period = _period(request, config, now)
    rank = request.query.get("rank", "messages")
    if rank not in RANK_METRICS:
        rank = "messages"
    members = await puppet_member_counts(gonghao(request).connection, config)
    figures = await evaluate_period(st.db, config, period, now=now, member_counts=members)
    nav = _navigation(config, period, now, "/groups")
    chart = bar_chart(figures.by_hour, [f"{h}时" for h in range(24)],
                      title=f"{period.label}各时段居民报告（起）", unit="起", label_every=2)
    rank_label, rank_unit = RANK_METRICS[rank]
    ranked = figures.ranking(rank)
    ranking = ranking_chart([value for _, value in ranked], [g.name for g, _ in ranked],
                            title=f"{period.label}各群{rank_label}排名", unit=rank_unit,
                            links=[f"/groups/{g.group_id}?period={period.kind}&date={period.first_day.isoformat()}"
                                   for g, _ in ranked]) if ranked else None
    return render(request, "groups.html", nav="groups", title="群统计", figures=figures,
                  since=figures.since, until=figures.until, chart=chart, ranking=ranking, rank=rank,
                  rank_label=rank_label, ranks=[(key, label) for key, (label, _) in RANK_METRICS.items()],
                  categories=_categories(config), share_text=share_text, date=period.first_day.isoformat(),
                  **nav)


async def group_page(request: web.Request) -> web.StreamResponse:
    st = station(request)
    config = st.current.config
    group = next((g for g in config.groups if g.id == request.match_info["group_id"]), None)
    if group is None:
        raise web.HTTPNotFound()
    now = st.now()
    period = _period(request, config, now)
    members = await puppet_member_counts(gonghao(request).connection, config)
    figures = await evaluate_period(st.db, config, period, now=now, member_counts=members)
    row = figures.group(group.id)
    assert row is not None
    trend = await weekly_trend(st.db, config, now, weeks=TREND_WEEKS, group_id=group.id)
    trend_svg = trend_chart([p.label for p in trend], [p.messages for p in trend], [p.reports for p in trend],
                            title=f"{group.display_name}近{TREND_WEEKS}周消息与居民报告", bar_name="消息",
                            line_name="居民报告", bar_unit="条", line_unit="起")
    hours = bar_chart(row.by_hour, [f"{h}时" for h in range(24)], unit="起", label_every=2,
                      title=f"{group.display_name}{period.label}各时段居民报告（起）")
    officer = config.officer(group.officer) if group.officer else None
    return render(request, "group.html", nav="groups", title=group.display_name, group=group, row=row,
                  figures=figures, officer=officer, trend=trend, trend_chart=trend_svg, hours_chart=hours,
                  categories=_categories(config), share_text=share_text, weeks=TREND_WEEKS,
                  inquiries_available=figures.inquiries_available,
                  **_navigation(config, period, now, f"/groups/{group.id}"))
