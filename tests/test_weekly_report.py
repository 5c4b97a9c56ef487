"""The weekly report: when it is due, its content for a known week, sent to the station head once (twice
called, called concurrently, or after a "restart"), kept, and shown on the admin web with a CSV download.
The job is called directly with the fake clock, exactly as bot/scheduler.py calls it."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import yaml
from sqlalchemy import func, select

from bot.config.loader import load_config
from bot.config.report_schema import WeeklyReportConfig
from bot.config.schema import Config, Role
from handlers.runtime import ConfigVersion, Station
from handlers.weekly_report import (
    CSV_HEADER,
    OUTBOX_KIND,
    due_week,
    report_csv,
    send_weekly_report,
    settings_of,
)
from models.db import Database
from models.reports import WeeklyReport
from models.tables import OutboxMessage
from tests.conftest import JINXIU, ROOT, WANG, FakeClock
from tests.test_evaluation import build_week
from tests.test_web import WebEnv, edit_config, web  # noqa: F401  (``web`` is the fixture)

ZHAO = "wxid_officer_zhao"
SHANGHAI = ZoneInfo("Asia/Shanghai")

EXPECTED_SUMMARY = (
    "【花木派出所·群工作周报】2026年11月23日—11月29日\n"
    "群消息11条，活跃居民6人；居民报告2起（火情1起、诈骗1起），接警中位用时6分钟，处理中位用时30分钟。\n"
    "防范宣传3次（预警1次、民警提示2次）。群众咨询4件，24小时内答复1件。\n"
    "最活跃：锦绣小区平安群（5条）。报告最多：锦绣小区平安群（1起）。\n"
    "各群明细见管理后台“周报”。"
)


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI).astimezone(UTC)


def with_settings(config: Config, **settings: object) -> Config:
    """The config with a ``weekly_report`` section (as ``Config.weekly_report`` will carry it)."""
    return config.model_copy(update={"weekly_report": WeeklyReportConfig.model_validate(settings)})


async def reported_week(database: Database, clock: FakeClock) -> Station:
    """The known week of tests/test_evaluation.py, with the default schedule (Monday 08:00, whatever the
    shipped config.yaml says), at Monday 2026-11-30 08:00."""
    station = await build_week(database, clock)
    station.current = ConfigVersion.build(with_settings(station.current.config))
    return station


async def weekly_rows(database: Database) -> list[OutboxMessage]:
    async with database.session() as session:
        return list((await session.scalars(select(OutboxMessage).where(OutboxMessage.kind == OUTBOX_KIND)
                                           .order_by(OutboxMessage.id))).all())


# -- when ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("now", "settings", "week"), [
    ("2026-11-30 07:59", {}, None),  # Monday 08:00 has not come; last Monday's is long past
    ("2026-11-30 08:00", {}, date(2026, 11, 23)),
    ("2026-11-30 19:59", {}, date(2026, 11, 23)),  # catch_up 12h
    ("2026-11-30 20:00", {}, None),
    ("2026-12-01 09:00", {"catch_up": "2d"}, date(2026, 11, 23)),
    ("2026-12-04 17:30", {"weekday": "周五", "time": "17:00"}, date(2026, 11, 23)),  # last *full* week
    ("2026-12-06 23:00", {"weekday": "sun", "time": "22:30"}, date(2026, 11, 23)),
    ("2026-11-30 08:00", {"enabled": False}, date(2026, 11, 23)),  # due_week ignores enabled
])
def test_which_week_is_due(now: str, settings: dict[str, object], week: date | None) -> None:
    config = load_config(ROOT / "config.yaml")
    found = due_week(config, WeeklyReportConfig.model_validate(settings), local(now))
    assert (found.first_day if found else None) == week
    if found:
        monday = local(f"{week} 00:00")
        assert (found.start, found.end) == (monday, monday + timedelta(days=7))


def test_settings_validation() -> None:
    assert settings_of(load_config(ROOT / "config.yaml")).weekday == "mon"  # defaults until the field exists
    parsed = WeeklyReportConfig.model_validate(yaml.safe_load("weekday: 星期一\ntime: 08:30\n"))
    assert (parsed.weekday, parsed.time.strftime("%H:%M")) == ("mon", "08:30")  # YAML's 08:30 is the int 510
    for wrong in ({"weekday": "someday"}, {"time": "25:00"}, {"catch_up": "0s"}, {"text": "{% if %}"},
                  {"sometime": 1}):
        with pytest.raises(ValueError):
            WeeklyReportConfig.model_validate(wrong)


@pytest.mark.skipif("weekly_report" not in Config.model_fields, reason="Config.weekly_report not wired yet")
def test_the_config_file_section(tmp_path: object) -> None:
    from pathlib import Path

    data = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    data["weekly_report"] = {"weekday": "fri", "time": "17:00", "enabled": True}
    path = Path(str(tmp_path)) / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    assert settings_of(load_config(path)).weekday == "fri"


# -- the job on real databases -------------------------------------------------------------------------
async def test_content_sent_to_the_supervisor_once(database: Database, clock: FakeClock) -> None:
    station = await reported_week(database, clock)
    assert await send_weekly_report(station) is not None
    [row] = await weekly_rows(database)
    assert (row.conversation_id, row.is_room, row.status) == (ZHAO, False, "pending")
    assert row.text == EXPECTED_SUMMARY
    async with database.session() as session:
        report = (await session.scalars(select(WeeklyReport))).one()
    assert (report.station_id, report.week_start) == ("huamu", date(2026, 11, 23))
    assert report.recipients == ["zhao"]
    assert (report.period_start, report.period_end) == (local("2026-11-23 00:00"), local("2026-11-30 00:00"))
    assert report.summary == EXPECTED_SUMMARY and report.created_at == clock()
    groups = {g["group_id"]: g for g in report.figures["groups"]}
    assert groups["jinxiu"]["messages"] == 5 and groups["fangdian"]["by_category"] == {"scam": 1}
    assert report.figures["total"]["median_ack_seconds"] == 360.0 and report.figures["by_hour"][23] == 1

    clock.current += timedelta(minutes=5)
    assert await send_weekly_report(station) is None  # the next tick
    restarted = Station(ConfigVersion.build(station.current.config), database, clock)  # a new process
    assert await send_weekly_report(restarted) is None
    assert len(await weekly_rows(database)) == 1


async def test_two_processes_at_once_send_once(database: Database, clock: FakeClock) -> None:
    station = await reported_week(database, clock)
    other = Station(ConfigVersion.build(station.current.config), database, clock)
    results = await asyncio.gather(*(send_weekly_report(s) for s in (station, other, station, other)))
    assert len([r for r in results if r is not None]) == 1
    assert len(await weekly_rows(database)) == 1
    async with database.session() as session:
        assert await session.scalar(select(func.count()).select_from(WeeklyReport)) == 1


async def test_disabled_not_due_and_no_supervisor(database: Database, clock: FakeClock) -> None:
    station = await reported_week(database, clock)
    config = station.current.config
    station.current = ConfigVersion.build(with_settings(config, enabled=False))
    assert await send_weekly_report(station) is None
    # due on Tuesdays: last Tuesday's is too old by now
    station.current = ConfigVersion.build(with_settings(config, weekday="tue"))
    assert await send_weekly_report(station) is None
    assert await weekly_rows(database) == []

    heads = [o for o in config.officers if o.role != Role.supervisor]
    station.current = ConfigVersion.build(config.model_copy(update={"officers": heads}))
    report_id = await send_weekly_report(station)  # kept for the web, sent to nobody
    assert report_id is not None and await weekly_rows(database) == []
    async with database.session() as session:
        assert (await session.get(WeeklyReport, report_id)).recipients == []  # type: ignore[union-attr]


async def test_a_custom_text_and_an_empty_week(database: Database, clock: FakeClock) -> None:
    clock.set_local("2026-11-30 08:00")
    config = with_settings(load_config(ROOT / "config.yaml"),
                           text="{{ week.label }}：{{ total.messages }}条，无人发言的群：{{ quiet_groups }}")
    station = Station(ConfigVersion.build(config), database, clock)
    assert await send_weekly_report(station) is not None
    [row] = await weekly_rows(database)
    assert row.text == ("2026年11月23日—11月29日：0条，"
                        "无人发言的群：锦绣小区平安群、联洋社区警民群、芳甸路居民群")


def test_csv_quotes_what_a_spreadsheet_would_run() -> None:
    config = load_config(ROOT / "config.yaml")
    figures = {"groups": [{"group_id": "x", "name": "=HYPERLINK(\"http://evil\")", "messages": 1,
                           "by_category": {"fire": 2}, "share": 0.25, "median_ack_seconds": 90.0}],
               "total": {"group_id": "*", "name": "全站合计", "messages": 1}}
    text = report_csv(config, figures)
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
    assert rows[0] == CSV_HEADER
    assert rows[1][:9] == ["x", "'=HYPERLINK(\"http://evil\")", "1", "", "", "25.0", "", "火情2", "1.5"]
    assert rows[2][:3] == ["*", "全站合计", "1"]


# -- through the sandbox and the admin web -------------------------------------------------------------
async def test_sent_through_the_sandbox_and_kept_on_the_web(web: WebEnv) -> None:  # noqa: F811
    env = web.env
    station = web.app.station
    assert station is not None
    await station.db.create_schema()  # the weekly_reports table, until its migration exists
    if "weekly_report" in Config.model_fields:  # the default schedule, whatever the shipped config.yaml says
        schedule = {"weekday": "mon", "time": "08:00"}
        edit_config(env.config_path, lambda data: data.update(weekly_report=schedule))
        assert web.app.reload() == []
    start = env.sandbox.log.last_seq
    assert await env.outcome_of(await env.sandbox.say("wxid_res_02", "今晚吃火锅", room=JINXIU)) == "quiet"
    incident = await web.report()  # Friday 10:00, in 锦绣
    env.clock.current += timedelta(minutes=2)
    await env.sandbox.say(WANG, f"收到 {incident.id}")
    await env.bot_says(JINXIU, start, "已接警")

    env.clock.set_local("2026-11-30 08:00")
    results = await asyncio.gather(send_weekly_report(station), send_weekly_report(station))
    assert len([r for r in results if r is not None]) <= 1  # (none if a wired scheduler tick came first)
    sent = await env.bot_says(ZHAO, start, "群工作周报")
    assert sent["text"].startswith("【花木派出所·群工作周报】2026年11月23日—11月29日\n"
                                   "群消息2条，活跃居民2人；居民报告1起（火情1起），接警中位用时2分钟。")
    async with station.db.session() as session:
        [report] = (await session.scalars(select(WeeklyReport))).all()
        assert await session.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.kind == OUTBOX_KIND)) == 1
    assert report.summary == sent["text"]

    viewer = await web.logged_in("viewer1")
    listing = await viewer.get("/reports")
    assert listing.status == 200 and f'<tr data-report="{report.id}">' in listing.text
    assert "2026年11月23日—11月29日" in listing.text and "赵所长" in listing.text
    assert "每周一 08:00" in listing.text
    page = await viewer.get(f"/reports/{report.id}")
    assert page.status == 200 and report.summary.split("\n")[0] in page.text
    row = re.search(r'<tr data-group="jinxiu"[^>]*>(.*?)</tr>', page.text, re.S)
    assert row and dict(re.findall(r'data-field="(\w+)">(.*?)</td>', row.group(1), re.S))["messages"] == "2"
    assert f'href="/reports/{report.id}.csv"' in page.text
    async with viewer.http.get(f"/reports/{report.id}.csv") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/csv")
        assert "attachment" in response.headers["Content-Disposition"]
        assert "weekly-report-huamu-2026-11-23.csv" in response.headers["Content-Disposition"]
        body = (await response.read()).decode("utf-8")
    table = list(csv.reader(io.StringIO(body.removeprefix("\ufeff"))))
    assert table[0] == CSV_HEADER
    by_group = {line[0]: line for line in table[1:]}
    assert set(by_group) == {"jinxiu", "lianyang", "fangdian", "*"}
    assert by_group["jinxiu"][1:4] == ["锦绣小区平安群", "2", "2"]
    assert by_group["jinxiu"][6:9] == ["1", "火情1", "2.0"]
    assert (await viewer.get("/reports/99999")).status == 404
    assert (await viewer.get("/reports/99999.csv")).status == 404
    stranger = web.client()
    assert (await stranger.get(f"/reports/{report.id}.csv")).status == 302  # login first

