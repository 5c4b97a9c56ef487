"""The weekly report for the station head: every group's figures for the last full calendar week, sent once
as a short private summary to each officer with role ``supervisor``, and kept for the admin web (周报).

A scheduler job (:func:`send_weekly_report`) runs at every tick. When the configured local weekday and time
have come (and not more than ``catch_up`` ago), it claims the week with ``INSERT … ON CONFLICT (station_id,
week_start) DO NOTHING`` and, in the same transaction, queues the messages in the outbox. A restart, a second
tick, or a second process sharing the database finds the row taken and sends nothing.
"""

from __future__ import annotations

import csv
import io
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bot.config.report_schema import WeeklyReportConfig
from bot.config.schema import Config, Role
from bot.config.templates import render
from handlers.evaluation import OTHER, Evaluation, GroupFigures, Period, evaluate, period_of_day, week_start
from handlers.runtime import Station
from models.outbox import PRIORITY_NORMAL, enqueue
from models.reports import WeeklyReport

log = logging.getLogger(__name__)

_DEFAULT = WeeklyReportConfig()
OUTBOX_KIND = "weekly_report"


def settings_of(config: Config) -> WeeklyReportConfig:
    """The config's ``weekly_report`` section (the defaults until ``Config.weekly_report`` exists)."""
    found = getattr(config, "weekly_report", None)
    return found if isinstance(found, WeeklyReportConfig) else _DEFAULT


def due_at(config: Config, settings: WeeklyReportConfig, now: datetime) -> datetime:
    """The latest scheduled moment (configured weekday and local time) at or before ``now``."""
    today = now.astimezone(config.zone).date()
    day = week_start(today) + timedelta(days=settings.weekday_index)
    moment = datetime.combine(day, settings.time, tzinfo=config.zone)
    if moment > now:
        moment = datetime.combine(day - timedelta(days=7), settings.time, tzinfo=config.zone)
    return moment


def due_week(config: Config, settings: WeeklyReportConfig, now: datetime) -> Period | None:
    """The week to report at ``now``: the last full calendar week before the latest scheduled moment, provided
    that moment was at most ``catch_up`` ago; otherwise None (nothing due)."""
    moment = due_at(config, settings, now)
    if now - moment >= settings.catch_up:
        return None
    previous = week_start(moment.astimezone(config.zone).date()) - timedelta(days=7)
    return period_of_day(config, "week", previous)


def duration_zh(seconds: float | None) -> str:
    """45秒, 3分钟, 2小时5分, 1天3小时; '' for None."""
    if seconds is None:
        return ""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}秒"
    minutes = whole // 60
    if minutes < 60:
        return f"{minutes}分钟"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}小时{minutes}分" if minutes else f"{hours}小时"
    days, hours = divmod(hours, 24)
    return f"{days}天{hours}小时" if hours else f"{days}天"


def _categories_text(config: Config, row: GroupFigures) -> str:
    ordered = sorted(row.by_category.items(), key=lambda item: (-item[1], item[0]))
    return "、".join(f"{config.categories.get(c, c)}{n}起" for c, n in ordered)


def summary_context(config: Config, week: Period, evaluation: Evaluation) -> dict[str, Any]:
    """What the summary template can use."""
    total = evaluation.total
    groups = [g for g in evaluation.groups if g.group_id != OTHER]

    def figures(row: GroupFigures) -> dict[str, Any]:
        values = row.to_dict()
        values.update(median_ack=duration_zh(row.median_ack), median_resolve=duration_zh(row.median_resolve),
                      categories=_categories_text(config, row))
        return values

    most_active = max(groups, key=lambda g: g.messages, default=None)
    most_reports = max(groups, key=lambda g: g.reports, default=None)
    return {
        "station": {"id": config.station.id, "name": config.station.name},
        "week": {"label": week.label, "start": week.first_day.isoformat(), "end": week.last_day.isoformat()},
        "total": figures(total),
        "groups": [figures(g) for g in groups],
        "categories": _categories_text(config, total),
        "most_active": figures(most_active) if most_active and most_active.messages else None,
        "most_reports": figures(most_reports) if most_reports and most_reports.reports else None,
        "quiet_groups": "、".join(g.name for g in groups if not g.messages),
    }


def figures_json(evaluation: Evaluation) -> dict[str, Any]:
    return {"groups": [g.to_dict() for g in evaluation.groups], "total": evaluation.total.to_dict(),
            "by_hour": list(evaluation.by_hour), "inquiries_available": evaluation.inquiries_available}


async def build_report(station: Station, week: Period, now: datetime) -> tuple[str, dict[str, Any]]:
    """The summary text and the per-group figures of ``week`` (computed now)."""
    config = station.current.config
    evaluation = await evaluate(station.db, config, week.start, week.end, now=now)
    text = render(settings_of(config).text, summary_context(config, week, evaluation))
    return text, figures_json(evaluation)


async def send_weekly_report(station: Station) -> int | None:
    """The scheduler job: if a week's report is due and nobody has claimed it, keep it and queue it for the
    station head. Returns the new report's id, or None when nothing was due or it was already done."""
    config = station.current.config
    settings = settings_of(config)
    if not settings.enabled:
        return None
    now = station.now()
    week = due_week(config, settings, now)
    if week is None:
        return None
    async with station.db.session() as session:
        done = await session.scalar(select(WeeklyReport.id).where(
            WeeklyReport.station_id == config.station.id, WeeklyReport.week_start == week.first_day))
    if done is not None:
        return None
    text, figures = await build_report(station, week, now)
    supervisors = [o for o in config.officers if o.role == Role.supervisor]
    insert = sqlite_insert if station.db.is_sqlite else pg_insert
    async with station.db.session() as session, session.begin():
        report_id = (await session.execute(
            insert(WeeklyReport).values(
                station_id=config.station.id, week_start=week.first_day, period_start=week.start,
                period_end=week.end, created_at=now, summary=text, figures=figures,
                recipients=[o.id for o in supervisors])
            .on_conflict_do_nothing(index_elements=["station_id", "week_start"])
            .returning(WeeklyReport.id))).scalar_one_or_none()
        if report_id is None:
            return None  # another process (or an earlier tick) took this week meanwhile
        for officer in supervisors:
            enqueue(session, account=config.station.id, conversation_id=officer.wechat_id, is_room=False,
                    text=text, now=now, kind=OUTBOX_KIND, priority=PRIORITY_NORMAL)
    if supervisors:
        station.outbox_ready.set()
        log.info("weekly report #%s (%s) queued for %s", report_id, week.label,
                 ", ".join(o.id for o in supervisors))
    else:
        log.warning("weekly report #%s (%s) kept, but no officer has role supervisor to receive it",
                    report_id, week.label)
    return report_id


# -- CSV -------------------------------------------------------------------------------------------------
CSV_HEADER = ["群编号", "群名称", "消息", "活跃居民", "群内居民", "发言比例(%)", "居民报告", "按类别",
              "接警中位用时(分钟)", "处理中位用时(分钟)", "预警", "民警提示", "防范宣传合计", "群众咨询",
              "24小时内答复", "未超24小时待答复"]


def _cell(value: Any) -> Any:
    """Numbers as they are; text that a spreadsheet would read as a formula is quoted."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _minutes(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / 60:.1f}"


def report_csv(config: Config, figures: dict[str, Any]) -> str:
    """One line per group and one for the station, as stored with the report (UTF-8 with a BOM, so that
    spreadsheet programs read the Chinese right)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for row in [*figures.get("groups", []), figures.get("total", {})]:
        if not row:
            continue
        counts = sorted((row.get("by_category") or {}).items(), key=lambda item: (-item[1], item[0]))
        categories = "、".join(f"{config.categories.get(c, c)}{n}" for c, n in counts)
        share = row.get("share")
        writer.writerow([_cell(v) for v in (
            row.get("group_id") or "", row.get("name"), row.get("messages"), row.get("residents"),
            row.get("members"), "" if share is None else f"{share * 100:.1f}", row.get("reports"), categories,
            _minutes(row.get("median_ack_seconds")), _minutes(row.get("median_resolve_seconds")),
            row.get("warnings"), row.get("officer_posts"), row.get("prevention"), row.get("inquiries"),
            row.get("answered_24h"), row.get("inquiries_pending"))])
    return "\ufeff" + out.getvalue()
