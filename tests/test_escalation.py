"""Escalation chains, reminders, lapsed acknowledgements and report dedup, on a fake clock and real databases.

Default config: a P1 report (fire) follows chain `urgent`: +3m and +13m (overdue) to [covering, duty,
supervisor], then every 10m, 3 times. Friday 10:00: wang covers 锦绣, li is the day duty officer, zhao on shift.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select

from handlers import pipeline
from handlers.escalation import run_due
from handlers.runtime import Station
from models.db import Database
from models.tables import Incident, IncidentEvent, OutboxMessage
from tests.conftest import FakeClock
from tests.test_storage import make_station, resident_says

OFFICER = {"sender": "wxid_officer_wang", "name": "王警官", "room": None}


async def rows(database: Database, kind: str) -> list[OutboxMessage]:
    async with database.session() as session:
        return list((await session.scalars(
            select(OutboxMessage).where(OutboxMessage.kind == kind).order_by(OutboxMessage.id))).all())


async def incident(database: Database) -> Incident:
    async with database.session() as session:
        return (await session.scalars(select(Incident).order_by(Incident.id))).first()  # type: ignore[return-value]


async def events(database: Database) -> list[str]:
    async with database.session() as session:
        return [e.kind for e in (await session.scalars(select(IncidentEvent).order_by(IncidentEvent.id))).all()]


async def report_fire(station: Station, clock: FakeClock) -> None:
    assert await pipeline.handle(station, resident_says("楼道闻到一股烟焦味!", "m1", clock)) == "incident:fire"


async def test_never_acknowledged_walks_the_chain(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await report_fire(station, clock)
    clock.current += timedelta(minutes=2, seconds=59)
    assert (await run_due(station)).steps == 0  # not yet
    clock.current += timedelta(seconds=1)
    assert (await run_due(station)).steps == 1
    first = await rows(database, "escalation")
    assert sorted(r.conversation_id for r in first) == ["wxid_officer_li", "wxid_officer_wang", "wxid_officer_zhao"]
    assert "已3分钟无人确认" in first[0].text and "收到 1" in first[0].text
    assert (await run_due(station)).steps == 0  # the same step is never taken twice
    clock.current += timedelta(minutes=10)
    assert (await run_due(station)).steps == 1
    assert (await incident(database)).overdue
    clock.current += timedelta(hours=2)  # repeats: 3 more, then the chain is done
    assert (await run_due(station)).steps == 3
    clock.current += timedelta(hours=2)
    assert (await run_due(station)).steps == 0
    assert len(await rows(database, "escalation")) == 5 * 3
    assert (await events(database)).count("escalated") == 5
    assert station.metrics.registry.get_sample_value("gonghao_escalations_total") == 5


async def test_acknowledged_in_time_stops_the_chain(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await report_fire(station, clock)
    clock.current += timedelta(minutes=2)
    assert await pipeline.handle(station, resident_says("收到", "a1", clock, **OFFICER)) == "ack_acknowledged"
    clock.current += timedelta(minutes=20)
    assert (await run_due(station)).steps == 0
    assert await rows(database, "escalation") == []


async def test_steps_due_during_an_outage_are_taken_late_not_skipped(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await report_fire(station, clock)
    clock.current += timedelta(minutes=34)  # 3, 13, 23 and 33 minutes have all passed
    assert (await run_due(station)).steps == 4
    assert (await events(database)).count("escalated") == 4
    assert (await run_due(station)).steps == 0


async def test_acknowledged_then_forgotten(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await report_fire(station, clock)
    clock.current += timedelta(minutes=1)
    await pipeline.handle(station, resident_says("收到", "a1", clock, **OFFICER))
    clock.current += timedelta(minutes=30)
    assert (await run_due(station)).reminders == 1
    [reminder] = await rows(database, "reminder")
    assert reminder.conversation_id == "wxid_officer_wang" and "尚未办结" in reminder.text
    assert (await run_due(station)).reminders == 0
    clock.current += timedelta(minutes=90)  # two hours after the acknowledgement
    tick = await run_due(station)
    assert tick.lapsed == 1
    lapsed = await incident(database)
    assert (lapsed.status, lapsed.acknowledged_by) == ("open", None)
    assert (await run_due(station)).steps == 1  # escalates again at once
    assert (await events(database))[-2:] == ["ack_lapsed", "escalated"]


async def test_resolution_stops_everything(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await report_fire(station, clock)
    outcome = await pipeline.handle(station, resident_says("处理完毕 1 已扑灭，无人受伤", "r1", clock, **OFFICER))
    assert outcome == "resolve_resolved"
    clock.current += timedelta(hours=5)
    tick = await run_due(station)
    assert (tick.steps, tick.reminders, tick.lapsed) == (0, 0, 0)
    [result] = await rows(database, "result")
    assert result.conversation_id == "jinxiu@chatroom" and "已扑灭，无人受伤" in result.text


async def test_three_residents_raise_a_scam_report_to_p1(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    text = "收到一条短信说法人信息到期"
    assert await pipeline.handle(station, resident_says(text, "m1", clock)) == "incident:scam_license_expiry"
    for number, sender in enumerate(["wxid_res_02", "wxid_res_03"], 2):
        clock.current += timedelta(minutes=2)
        outcome = await pipeline.handle(station, resident_says(text, f"m{number}", clock, sender=sender))
        assert outcome == "incident:joined:scam_license_expiry"
    found = await incident(database)
    assert (found.severity, found.report_count, found.chain_id) == ("P1", 3, "urgent")
    raised = [r for r in await rows(database, "ping") if "已有3位居民报告" in r.text]
    assert [r.conversation_id for r in raised] == ["wxid_officer_wang"]
    assert len(await rows(database, "ping")) == 2  # the first report's ping and the raise; no ping per report


async def test_two_processes_take_each_step_once(database: Database, clock: FakeClock) -> None:
    first, second = make_station(database, clock), make_station(database, clock)
    await report_fire(first, clock)
    clock.current += timedelta(minutes=14)
    ticks = await asyncio.gather(run_due(first), run_due(second), run_due(first), run_due(second))
    assert sum(t.steps for t in ticks) == 2
    assert (await events(database)).count("escalated") == 2
    assert len(await rows(database, "escalation")) == 2 * 3
