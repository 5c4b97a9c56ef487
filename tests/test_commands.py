"""Officers' private commands: the parser as a table, and each command on a real database."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml
from sqlalchemy import select

from bot.config.loader import parse_config
from handlers import pipeline
from handlers.commands import Command, parse_command
from handlers.runtime import ConfigVersion, Station
from models.db import Database
from models.tables import Incident, OutboxMessage
from tests.conftest import ROOT, FakeClock
from tests.test_storage import make_station, resident_says

PARSE = [
    ("收到", Command("ack")),
    ("收到 12", Command("ack", 12)),
    ("收到12", Command("ack", 12)),
    ("  收到   #12 ", Command("ack", 12)),
    ("收到了！", Command("ack")),
    ("收倒", Command("ack")),
    ("1", Command("ack")),
    ("ＯＫ", Command("ack")),
    ("收到 １２", Command("ack", 12)),
    ("处理完毕 12 已扑灭，无人受伤", Command("resolve", 12, "已扑灭，无人受伤")),
    ("处理完毕12：孩子已找到", Command("resolve", 12, "孩子已找到")),
    ("结 7 已劝离", Command("resolve", 7, "已劝离")),
    ("处理完毕", Command("resolve")),
    ("转 12 陈警官", Command("transfer", 12, "陈警官")),
    ("转12给李警官", Command("transfer", 12, "李警官")),
    ("值班", Command("duty")),
    ("谁值班", Command("duty")),
    ("我的", Command("mine")),
    ("帮助", Command("help")),
    ("收到12个快递", Command("unknown")),
    ("你好", Command("unknown")),
    ("", Command("unknown")),
]


@pytest.mark.parametrize(("text", "expected"), PARSE)
def test_parse_command(text: str, expected: Command) -> None:
    assert parse_command(text) == expected


WANG = {"sender": "wxid_officer_wang", "name": "王警官", "room": None}


async def replies(database: Database, to: str) -> list[str]:
    async with database.session() as session:
        return [r.text for r in (await session.scalars(
            select(OutboxMessage).where(OutboxMessage.conversation_id == to, OutboxMessage.kind == "command_reply")
            .order_by(OutboxMessage.id))).all()]


async def test_transfer_duty_mine_help(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await pipeline.handle(station, resident_says("楼道着火了", "m1", clock))
    assert await pipeline.handle(station, resident_says("收到", "c1", clock, **WANG)) == "ack_acknowledged"
    assert await pipeline.handle(station, resident_says("我的", "c2", clock, **WANG)) == "mine"
    assert await pipeline.handle(station, resident_says("转 1 陈警官", "c3", clock, **WANG)) == "transferred"
    async with database.session() as session:
        incident = await session.get(Incident, 1)
        pings = (await session.scalars(select(OutboxMessage).where(
            OutboxMessage.conversation_id == "wxid_officer_chen"))).all()
    assert incident is not None and (incident.status, incident.assigned_officers) == ("open", ["chen"])
    assert "王警官把这起警情转给您" in pings[0].text
    assert await pipeline.handle(station, resident_says("转 1 不存在的人", "c4", clock, **WANG)) == \
        "transfer_unknown_officer"
    assert await pipeline.handle(station, resident_says("值班", "c5", clock, **WANG)) == "duty"
    assert await pipeline.handle(station, resident_says("帮助", "c6", clock, **WANG)) == "help"
    assert await pipeline.handle(station, resident_says("今天天气", "c7", clock, **WANG)) == "unknown_command"
    texts = await replies(database, "wxid_officer_wang")
    assert "#1" in texts[1] and "处理中" in texts[1]  # 我的
    assert "已转给陈警官" in texts[2]
    assert "没有找到民警" in texts[3]
    assert "王警官（社区民警）" in texts[4] and "李警官（值班民警）" in texts[4]  # 值班 on Friday 10:00
    assert texts[5] == texts[6] and "处理完毕 12" in texts[5]  # unknown commands get the help text


async def test_resolve_latest_without_a_number(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await pipeline.handle(station, resident_says("楼道着火了", "m1", clock))
    await pipeline.handle(station, resident_says("收到", "c1", clock, **WANG))
    clock.current += timedelta(minutes=20)
    assert await pipeline.handle(station, resident_says("处理完毕 已扑灭", "c2", clock, **WANG)) == "resolve_resolved"
    assert await pipeline.handle(station, resident_says("处理完毕 1 又一次", "c3", clock, **WANG)) == "resolve_already"
    assert await pipeline.handle(station, resident_says("处理完毕", "c4", clock, **WANG)) == "resolve_nothing_open"


async def test_residents_cannot_use_commands(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await pipeline.handle(station, resident_says("楼道着火了", "m1", clock))
    for number, text in enumerate(["收到", "处理完毕 1 没事了", "转 1 陈警官", "值班", "我的"]):
        outcome = await pipeline.handle(station, resident_says(text, f"r{number}", clock, room=None))
        assert outcome == "refused_not_officer"
    async with database.session() as session:
        incident = await session.get(Incident, 1)
    assert incident is not None and incident.status == "open" and incident.assigned_officers == ["wang"]


async def test_officers_act_only_on_their_own_station(database: Database, clock: FakeClock) -> None:
    ours = make_station(database, clock)
    data = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    data["station"] = {"id": "lujiazui", "name": "陆家嘴派出所"}
    theirs = Station(ConfigVersion.build(parse_config(yaml.safe_dump(data, allow_unicode=True))), database, clock)
    foreign = resident_says("楼道着火了", "x1", clock)
    assert await pipeline.handle(theirs, foreign.__class__(**{**foreign.__dict__, "account": "lujiazui"})) == \
        "incident:fire"
    for number, text in enumerate(["收到 1", "处理完毕 1 好了", "转 1 陈警官"]):
        outcome = await pipeline.handle(ours, resident_says(text, f"c{number}", clock, **WANG))
        assert outcome in ("ack_not_found", "resolve_not_found", "transfer_not_found")
    async with database.session() as session:
        incident = await session.get(Incident, 1)
    assert incident is not None and incident.station_id == "lujiazui" and incident.status == "open"
