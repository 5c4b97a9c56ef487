"""Weekly reports as they were sent: the list, one report with its per-group figures, and its CSV."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from bot.config.schema import Config
from bot.web.svg import bar_chart
from bot.web.views_base import render, station
from handlers.evaluation import period_of_day
from handlers.weekly_report import report_csv, settings_of
from models.reports import WeeklyReport

PAGE_SIZE = 50


def setup(router: web.UrlDispatcher) -> None:
    router.add_get("/reports", report_list)
    router.add_get(r"/reports/{number:\d+}.csv", report_download)
    router.add_get(r"/reports/{number:\d+}", report_page)


def _week_label(config: Config, report: WeeklyReport) -> str:
    return period_of_day(config, "week", report.week_start).label


def _recipients(config: Config, report: WeeklyReport) -> str:
    names = [(o.name if (o := config.officer(officer_id)) else officer_id)
             for officer_id in report.recipients or []]
    return "、".join(names) or "（无所领导，未发送）"


async def _load(request: web.Request) -> WeeklyReport:
    st = station(request)
    async with st.db.session() as s:
        report = await s.get(WeeklyReport, int(request.match_info["number"]))
    if report is None or report.station_id != st.id:
        raise web.HTTPNotFound()
    return report


async def report_list(request: web.Request) -> web.StreamResponse:
    st = station(request)
    config = st.current.config
    try:
        page = max(1, min(int(request.query.get("page", "1")), 10_000))
    except ValueError:
        page = 1
    async with st.db.session() as s:
        found = (await s.scalars(
            select(WeeklyReport).where(WeeklyReport.station_id == st.id)
            .order_by(WeeklyReport.week_start.desc())
            .offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE + 1))).all()
    rows = [{"id": r.id, "week": _week_label(config, r), "created_at": r.created_at,
             "recipients": _recipients(config, r), "total": (r.figures or {}).get("total", {})}
            for r in found[:PAGE_SIZE]]
    settings = settings_of(config)
    day = "一二三四五六日"[settings.weekday_index]
    schedule = (f"每周{day} {settings.time:%H:%M}（当地时间）自动生成并发给所领导" if settings.enabled
                else "自动周报已关闭（配置 weekly_report.enabled）")
    return render(request, "reports.html", nav="reports", title="周报", rows=rows, page=page,
                  has_next=len(found) > PAGE_SIZE, schedule=schedule)


def _category_text(config: Config, row: dict[str, Any]) -> str:
    ordered = sorted((row.get("by_category") or {}).items(), key=lambda item: (-item[1], item[0]))
    return "，".join(f"{config.categories.get(c, c)} {n}" for c, n in ordered) or "—"


ROW_KEYS = ("group_id", "name", "messages", "residents", "members", "share", "reports", "median_ack_seconds",
            "median_resolve_seconds", "warnings", "officer_posts", "prevention", "inquiries", "answered_24h",
            "inquiries_pending")


def _row(stored: dict[str, Any], *, total: bool) -> dict[str, Any]:
    """A stored row with every key the page shows (a report kept by an older version may lack some)."""
    row: dict[str, Any] = {key: stored.get(key) for key in ROW_KEYS}
    row.update(by_category=stored.get("by_category") or {}, total=total,
               name=row["name"] or row["group_id"] or "")
    return row


async def report_page(request: web.Request) -> web.StreamResponse:
    st = station(request)
    config = st.current.config
    report = await _load(request)
    figures = report.figures or {}
    by_hour = figures.get("by_hour") or [0] * 24
    chart = bar_chart(by_hour, [f"{h}时" for h in range(24)], title="各时段居民报告（起）", unit="起",
                      label_every=2)
    rows = [_row(g, total=False) for g in figures.get("groups", [])]
    rows.append(_row(figures.get("total", {}), total=True))
    return render(request, "report.html", nav="reports", title=f"周报 {_week_label(config, report)}",
                  report=report, week=_week_label(config, report), rows=rows, chart=chart,
                  recipients=_recipients(config, report), categories=lambda row: _category_text(config, row),
                  inquiries_available=bool(figures.get("inquiries_available")))


async def report_download(request: web.Request) -> web.StreamResponse:
    st = station(request)
    report = await _load(request)
    body = report_csv(st.current.config, report.figures or {})
    name = f"weekly-report-{report.station_id}-{report.week_start.isoformat()}.csv"
    return web.Response(body=body.encode("utf-8"), headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{name}"',
    })
