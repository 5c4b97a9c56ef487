"""Group evaluation figures on real SQLite and PostgreSQL: a known week of messages, reports,
acknowledgements, warnings, officers' posts and inquiries, built through the real pipeline (and a few direct
rows), checked figure by figure; calendar periods in the config's zone; the 8-week trend; member counts from
the puppet; and the groups pages of the admin web against the sandbox."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from handlers import pipeline
from handlers.evaluation import (
    OTHER,
    Evaluation,
    evaluate,
    evaluate_period,
    neighbour,
    period_containing,
    period_of_day,
    puppet_member_counts,
    weekly_trend,
)
from handlers.runtime import Station
from models import outbox
from models.db import Database
from models.tables import BroadcastDelivery, Incident
from models.tickets import Ticket
from tests.conftest import FANGDIAN, JINXIU, FakeClock
from tests.test_storage import make_station, resident_says
from tests.test_web import WebEnv, web  # noqa: F401  (``web`` is the fixture)

SHANGHAI = ZoneInfo("Asia/Shanghai")
LIANYANG = "lianyang@chatroom"
ELSEWHERE = "elsewhere@chatroom"  # a room the config does not know


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI).astimezone(UTC)


async def say(station: Station, clock: FakeClock, when: str, text: str, message_id: str, *,
              room: str | None = JINXIU, sender: str = "wxid_res_01", name: str = "张阿姨") -> str:
    clock.set_local(when)
    inbound = resident_says(text, message_id, clock, room=room, sender=sender, name=name)
    topics = {JINXIU: "锦绣小区平安群", LIANYANG: "联洋社区警民群", FANGDIAN: "芳甸路居民群",
              ELSEWHERE: "楼下棋牌群"}
    return await pipeline.handle(station, replace(inbound, room_topic=topics.get(room or "")))


async def incident_in(database: Database, room: str) -> Incident:
    async with database.session() as session:
        return (await session.scalars(select(Incident).where(Incident.room_id == room))).one()


async def build_week(database: Database, clock: FakeClock) -> Station:
    """The week of Monday 2026-11-23 (Asia/Shanghai), with one message on each side of it."""
    station = make_station(database, clock)
    wang = {"sender": "wxid_officer_wang", "name": "王警官"}
    assert await say(station, clock, "2026-11-22 23:59:59", "明天见", "before") == "quiet"
    assert await say(station, clock, "2026-11-23 00:00", "今晚吃火锅", "m1", sender="wxid_res_02",
                     name="老李") == "quiet"
    # a warning to 锦绣 and 芳甸: only 锦绣's copy goes out
    zhou = {"sender": "wxid_officer_zhou", "name": "周警官"}
    assert await say(station, clock, "2026-11-24 09:00", "预警【锦绣,芳甸】近期有人冒充客服退款", "w1",
                     room=None, **zhou) == "broadcast_draft"
    assert await say(station, clock, "2026-11-24 09:01", "确认", "w2", room=None,
                     **zhou) == "broadcast_confirmed"
    async with database.session() as session, session.begin():
        delivery = (await session.scalars(select(BroadcastDelivery).where(
            BroadcastDelivery.group_id == "jinxiu"))).one()
        assert delivery.outbox_id is not None
        await outbox.mark_sent(session, delivery.outbox_id, at("2026-11-24 09:05"), "sent-1")
    # a fire in 锦绣: acknowledged after 2 minutes, resolved after 30
    assert await say(station, clock, "2026-11-25 10:00", "楼道闻到一股烟焦味!", "m2") == "incident:fire"
    fire = await incident_in(database, JINXIU)
    assert await say(station, clock, "2026-11-25 10:02", f"收到 {fire.id}", "a1", room=None,
                     **wang) == "ack_acknowledged"
    assert await say(station, clock, "2026-11-25 10:30", f"处理完毕 {fire.id} 已扑灭", "r1", room=None,
                     **wang) == "resolve_resolved"
    assert await say(station, clock, "2026-11-25 11:00", "防范电信诈骗，从我做起", "o1", **wang) == "officer_post"
    assert await say(station, clock, "2026-11-25 11:05", "明天上午社区有义诊活动", "o2", **wang) == "officer_post"
    # a scam in 芳甸 at night: acknowledged after 10 minutes, not resolved
    assert (await say(station, clock, "2026-11-26 23:00", "有人拿裸聊视频威胁我转钱", "m3", room=FANGDIAN,
                      sender="wxid_res_06", name="赵老师")).startswith("incident:")
    scam = await incident_in(database, FANGDIAN)
    assert await say(station, clock, "2026-11-26 23:10", f"收到 {scam.id}", "a2", room=None,
                     sender="wxid_officer_li", name="李警官") == "ack_acknowledged"
    assert await say(station, clock, "2026-11-27 09:00", "安全提示：陌生链接不要点", "o3", room=FANGDIAN,
                     sender="wxid_officer_chen", name="陈警官") == "officer_post"
    for number, (sender, text) in enumerate((("wxid_res_07", "快递放门口了"), ("wxid_res_09", "好的"),
                                             ("wxid_res_07", "今天天气不错"))):
        assert await say(station, clock, f"2026-11-27 09:3{number}", text, f"l{number}", room=LIANYANG,
                         sender=sender) == "quiet"
    assert await say(station, clock, "2026-11-27 12:00", "大家好", "x1", room=ELSEWHERE,
                     sender="wxid_res_10") == "quiet"
    assert await say(station, clock, "2026-11-28 12:00", "谢谢民警", "m4") == "quiet"
    assert await say(station, clock, "2026-11-30 00:00", "新的一周", "after", sender="wxid_res_03") == "quiet"
    # inquiries: answered in 3 h; answered after 30 h; unanswered but within 24 h at Monday 08:00; unanswered
    # and overdue; and one after the week
    async with database.session() as session, session.begin():
        for number, group, room, created, responded in (
            (9001, "jinxiu", JINXIU, "2026-11-24 10:00", "2026-11-24 13:00"),
            (9002, "fangdian", FANGDIAN, "2026-11-25 10:00", "2026-11-26 16:00"),
            (9003, "lianyang", LIANYANG, "2026-11-29 20:00", None),
            (9004, "lianyang", LIANYANG, "2026-11-28 08:00", None),
            (9005, "jinxiu", JINXIU, "2026-11-30 01:00", "2026-11-30 02:00"),
        ):
            session.add(Ticket(
                id=number, station_id="huamu", group_id=group, room_id=room, resident_id="wxid_res_01",
                text="请问居住证怎么办", detected_by="question", category="household", assignee="wang",
                status="responded" if responded else "open", created_at=at(created),
                due_at=at(created) + timedelta(hours=24), responded_at=at(responded) if responded else None))
    clock.set_local("2026-11-30 08:00")
    return station


def figures_of(evaluation: Evaluation) -> dict[str, dict[str, Any]]:
    keys = ("messages", "residents", "members", "share", "reports", "by_category", "median_ack_seconds",
            "median_resolve_seconds", "warnings", "officer_posts", "prevention", "inquiries", "answered_24h",
            "inquiries_pending")
    rows = [*evaluation.groups, evaluation.total]
    return {row.group_id: {k: row.to_dict()[k] for k in keys} for row in rows}


async def test_every_figure_of_a_known_week(database: Database, clock: FakeClock) -> None:
    station = await build_week(database, clock)
    config = station.current.config
    week = period_containing(config, "week", at("2026-11-25 12:00"))
    assert (week.start, week.end) == (at("2026-11-23 00:00"), at("2026-11-30 00:00"))
    evaluation = await evaluate(database, config, week.start, week.end, now=clock(),
                                member_counts={"jinxiu": 6, "lianyang": 5})
    assert evaluation.inquiries_available
    assert [g.group_id for g in evaluation.groups] == ["jinxiu", "lianyang", "fangdian", OTHER]
    assert figures_of(evaluation) == {
        "jinxiu": {"messages": 5, "residents": 2, "members": 6, "share": 2 / 6, "reports": 1,
                   "by_category": {"fire": 1}, "median_ack_seconds": 120.0, "median_resolve_seconds": 1800.0,
                   "warnings": 1, "officer_posts": 1, "prevention": 2, "inquiries": 1, "answered_24h": 1,
                   "inquiries_pending": 0},
        "lianyang": {"messages": 3, "residents": 2, "members": 5, "share": 0.4, "reports": 0,
                     "by_category": {},
                     "median_ack_seconds": None, "median_resolve_seconds": None, "warnings": 0,
                     "officer_posts": 0, "prevention": 0, "inquiries": 2, "answered_24h": 0,
                     "inquiries_pending": 1},
        "fangdian": {"messages": 2, "residents": 1, "members": None, "share": None, "reports": 1,
                     "by_category": {"scam": 1}, "median_ack_seconds": 600.0, "median_resolve_seconds": None,
                     "warnings": 0, "officer_posts": 1, "prevention": 1, "inquiries": 1, "answered_24h": 0,
                     "inquiries_pending": 0},
        OTHER: {"messages": 1, "residents": 1, "members": None, "share": None, "reports": 0,
                "by_category": {},
                "median_ack_seconds": None, "median_resolve_seconds": None, "warnings": 0, "officer_posts": 0,
                "prevention": 0, "inquiries": 0, "answered_24h": 0, "inquiries_pending": 0},
        "*": {"messages": 11, "residents": 6, "members": None, "share": None, "reports": 2,
              "by_category": {"fire": 1, "scam": 1}, "median_ack_seconds": 360.0,
              "median_resolve_seconds": 1800.0,
              "warnings": 1, "officer_posts": 2, "prevention": 3, "inquiries": 4, "answered_24h": 1,
              "inquiries_pending": 1},
    }
    hours = [0] * 24
    hours[10] = hours[23] = 1
    assert evaluation.by_hour == hours
    assert evaluation.group("fangdian").by_hour[23] == 1  # type: ignore[union-attr]
    assert [(g.group_id, v) for g, v in evaluation.ranking("messages")] == [
        ("jinxiu", 5.0), ("lianyang", 3.0), ("fangdian", 2.0)]
    assert [(g.group_id, v) for g, v in evaluation.ranking("share")] == [("lianyang", 40.0), ("jinxiu", 33.3)]
    assert [g.group_id for g, _ in evaluation.ranking("prevention")] == ["jinxiu", "fangdian", "lianyang"]

    # every group's members known: the station's share counts memberships (5 of 16)
    known = await evaluate(database, config, week.start, week.end, now=clock(),
                           member_counts={"jinxiu": 6, "lianyang": 5, "fangdian": 5})
    assert (known.total.members, known.total.share) == (16, 5 / 16)
    assert known.group("fangdian").share == 0.2  # type: ignore[union-attr]

    # the inquiry still within its 24 hours at Monday 08:00 is overdue by Tuesday
    later = await evaluate(database, config, week.start, week.end, now=at("2026-12-01 08:00"))
    assert (later.total.inquiries_pending, later.total.answered_24h) == (0, 1)


async def test_days_and_months_and_the_current_period(database: Database, clock: FakeClock) -> None:
    station = await build_week(database, clock)
    config = station.current.config
    day = period_of_day(config, "day", date(2026, 11, 25))
    figures = await evaluate_period(database, config, day, now=clock())
    assert figures.group("jinxiu").messages == 3  # type: ignore[union-attr]  # the fire and two officer posts
    assert figures.total.reports == 1 and figures.total.warnings == 0
    month = period_containing(config, "month", clock())  # 2026-11-30: November so far
    figures = await evaluate_period(database, config, month, now=clock())
    assert figures.until == clock() and figures.total.messages == 13  # every group message so far
    assert (figures.total.inquiries, figures.total.answered_24h) == (5, 2)
    december = neighbour(config, month, 1)
    assert (december.first_day, december.last_day) == (date(2026, 12, 1), date(2026, 12, 31))
    empty = await evaluate_period(database, config, december, now=clock())  # not begun: nothing, no error
    assert empty.total.messages == 0 and empty.since == empty.until == december.start


def test_periods_follow_the_config_zone() -> None:
    from bot.config.loader import load_config
    from tests.conftest import ROOT

    config = load_config(ROOT / "config.yaml")
    week = period_containing(config, "week", at("2026-11-29 23:59"))
    assert week.first_day == date(2026, 11, 23) and week.label == "2026年11月23日—11月29日"
    assert period_containing(config, "week", at("2026-11-30 00:00")).first_day == date(2026, 11, 30)
    assert period_of_day(config, "day", date(2026, 11, 27)).label == "2026年11月27日（周五）"
    assert neighbour(config, period_of_day(config, "month", date(2026, 12, 5)), 1).label == "2027年1月"
    assert neighbour(config, period_of_day(config, "week", date(2027, 1, 1)), -1).label == \
        "2026年12月21日—12月27日"
    new_york = config.model_copy(update={"timezone": "America/New_York"})
    fall_back = period_of_day(new_york, "day", date(2026, 11, 1))  # clocks go back: a 25-hour day
    assert fall_back.end - fall_back.start == timedelta(hours=25)
    assert fall_back.start == datetime(2026, 11, 1, 4, tzinfo=UTC)


async def test_eight_week_trend(database: Database, clock: FakeClock) -> None:
    station = await build_week(database, clock)
    config = station.current.config
    trend = await weekly_trend(database, config, clock())
    assert [p.week_start for p in trend] == [date(2026, 10, 12) + timedelta(weeks=n) for n in range(8)]
    assert [(p.messages, p.reports) for p in trend] == [(0, 0)] * 5 + [(1, 0), (11, 2), (1, 0)]
    assert trend[-2].label == "11/23"
    jinxiu = await weekly_trend(database, config, clock(), group_id="jinxiu", weeks=3)
    assert [(p.messages, p.reports) for p in jinxiu] == [(1, 0), (5, 1), (1, 0)]
    fangdian = await weekly_trend(database, config, clock(), group_id="fangdian", weeks=2)
    assert [(p.messages, p.reports) for p in fangdian] == [(2, 1), (0, 0)]


async def test_member_counts_from_the_puppet_tolerate_failures(database: Database, clock: FakeClock) -> None:
    config = make_station(database, clock).current.config

    class Puppet:
        async def room_members(self, room_id: str) -> list[str]:
            if room_id == LIANYANG:
                raise ConnectionError("puppet service gone")
            if room_id == FANGDIAN:
                await asyncio.Event().wait()  # never answers
            return ["wxid_gonghao_bot", "wxid_officer_wang", "wxid_officer_li", "wxid_res_01", "wxid_res_02"]

    connection = SimpleNamespace(_bot=SimpleNamespace(puppet=Puppet()), self_id="wxid_gonghao_bot")
    assert await puppet_member_counts(connection, config, timeout=0.2) == {"jinxiu": 2}
    assert await puppet_member_counts(None, config) == {}
    assert await puppet_member_counts(SimpleNamespace(_bot=None), config) == {}


# -- the web pages ------------------------------------------------------------------------------------------
def cells(text: str, attribute: str, group: str) -> dict[str, str]:
    row = re.search(rf'<tr {attribute}="{re.escape(group)}"[^>]*>(.*?)</tr>', text, re.S)
    assert row, text
    return dict(re.findall(r'data-field="(\w+)">(.*?)</td>', row.group(1), re.S))


async def test_groups_pages_in_the_web(web: WebEnv) -> None:  # noqa: F811
    env = web.env
    start = env.sandbox.log.last_seq
    assert await env.outcome_of(await env.sandbox.say("wxid_res_02", "今晚吃火锅", room=JINXIU)) == "quiet"
    assert await env.outcome_of(await env.sandbox.say("wxid_officer_wang", "防范电信诈骗，从我做起",
                                                      room=JINXIU)) == "officer_post"
    await web.report()  # a fire in 锦绣, 10:00 Friday
    await web.report("有人拿裸聊视频威胁我转钱", room=FANGDIAN, resident="wxid_res_06")
    await env.bot_says(JINXIU, start, "民警")
    viewer = await web.logged_in("viewer1")

    page = await viewer.get("/groups?period=week")
    assert page.status == 200 and "2026年11月23日—11月29日" in page.text
    assert cells(page.text, "data-group", "jinxiu") == {
        "messages": "3", "residents": "2", "reports": "1", "categories": "火情 1", "ack": "—", "resolve": "—"}
    # members from the sandbox's puppet service: residents only (officers and the bot left out)
    assert cells(page.text, "data-service-group", "jinxiu") == {
        "members": "6", "share": "33%", "prevention": "1", "warnings": "0", "officer_posts": "1",
        "inquiries": "0", "answered_24h": "0", "inquiries_pending": "0"}
    assert cells(page.text, "data-service-group", "fangdian")["share"] == "20%"
    assert cells(page.text, "data-service-group", "*")["share"] == "19%"  # 3 of 16 memberships
    assert '<svg' in page.text and 'id="ranking"' in page.text and "<title>10时: 2起</title>" in page.text
    assert re.findall(r'<g class="chart-row" data-label="([^"]+)" data-value="(\d+)"', page.text) == [
        ("锦绣小区平安群", "3"), ("芳甸路居民群", "1"), ("联洋社区警民群", "0")]
    shares = await viewer.get("/groups?period=week&rank=share")
    assert re.findall(r'<g class="chart-row" data-label="([^"]+)" data-value="([\d.]+)"', shares.text)[0] == \
        ("锦绣小区平安群", "33.3")

    previous = await viewer.get("/groups?period=week&date=2026-11-16")
    assert "2026年11月16日—11月22日" in previous.text
    assert cells(previous.text, "data-group", "*")["messages"] == "0"
    assert '<a href="/groups?period=week&amp;date=2026-11-23" rel="next">下一周 →</a>' in previous.text
    assert 'rel="next"' not in page.text  # no next week yet
    future = await viewer.get("/groups?period=day&date=2030-01-01")  # clamped to today
    assert "2026年11月27日（周五）" in future.text
    month = await viewer.get("/groups?period=month&date=bad")
    assert "2026年11月" in month.text and cells(month.text, "data-group", "*")["reports"] == "2"

    group = await viewer.get("/groups/jinxiu?period=week")
    assert group.status == 200 and "锦绣小区平安群" in group.text and "王警官" in group.text
    messages = re.search(r'<tr data-series="messages"><td>消息</td>(.*?)</tr>', group.text, re.S)
    reports = re.search(r'<tr data-series="reports"><td>居民报告</td>(.*?)</tr>', group.text, re.S)
    assert messages and reports
    assert re.findall(r">(\d+)</td>", messages.group(1)) == ["0"] * 7 + ["3"]
    assert re.findall(r">(\d+)</td>", reports.group(1)) == ["0"] * 7 + ["1"]
    assert 'class="chart chart-trend"' in group.text and "11/23 居民报告: 1起" in group.text
    assert '<div class="card" data-field="share"><b>33%</b>' in group.text
    assert (await viewer.get("/groups/nosuchgroup")).status == 404
    assert (await web.client().get("/groups/jinxiu")).status == 302  # login first


async def test_groups_page_without_the_puppet_leaves_the_share_empty(web: WebEnv) -> None:  # noqa: F811
    connection = web.app.connection
    assert connection is not None
    real = connection._bot

    class Broken:
        async def room_members(self, room_id: str) -> list[str]:
            raise RuntimeError("not logged in")

    connection._bot = SimpleNamespace(puppet=Broken())
    try:
        viewer = await web.logged_in("viewer1")
        page = await viewer.get("/groups?period=week&rank=share")
    finally:
        connection._bot = real
    assert page.status == 200
    assert cells(page.text, "data-service-group", "jinxiu")["members"] == "—"
    assert cells(page.text, "data-service-group", "jinxiu")["share"] == "—"
    assert 'id="ranking"' not in page.text and "暂无数据" in page.text
