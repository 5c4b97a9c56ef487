"""Faults, each really done: the puppet service goes away and comes back, the database connection is cut,
hostile input, a flood of reports. The bot must survive each, lose nothing and not spam."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.app import App, PuppetTarget
from bot.sandbox import Sandbox, load_world
from handlers import pipeline
from handlers.inbound import Inbound
from models.db import Database
from models.tables import InboundMessage, Incident, OutboxMessage
from tests.conftest import BOT, JINXIU, WANG, Env, FakeClock, write_config
from tests.test_storage import make_station, resident_says


async def test_bot_reconnects_when_the_puppet_service_comes_back(tmp_path: Path, clock: FakeClock,
                                                                 default_config_text: str) -> None:
    token = "reconnect-test-token"
    first = Sandbox(load_world(None), token=token)
    await first.start()
    port = first.grpc_port
    app = App(write_config(tmp_path, default_config_text), puppet=PuppetTarget(token, first.endpoint), clock=clock,
              watch=False)
    await app.start()
    second: Sandbox | None = None
    try:
        await app.wait_logged_in()
        await first.say("wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)
        await first.wait_for(WANG, lambda m: m["from"] == BOT and "警情 #" in m["text"])
        assert app.connection is not None and app.connection.logins == 1
        await first.stop()  # the puppet service dies
        # while it is down an escalation step comes due: it must wait in the outbox, not be lost
        clock.current += timedelta(minutes=3)
        app.timers_wake.set()
        second = Sandbox(load_world(None), token=token, grpc_port=port)
        await second.start()  # ... and comes back on the same address
        await second.wait_connected(30)
        escalated = await second.wait_for("wxid_officer_li", lambda m: "警情升级" in m["text"], timeout=30)
        assert "#1" in escalated["text"]
        assert app.connection.reconnects >= 1
        start = second.log.last_seq
        await second.say("wxid_res_02", "一个三四岁的小男孩光着脚在外到处找妈妈", room=JINXIU)
        await second.wait_for(JINXIU, lambda m: m["from"] == BOT and "孩子" in m["text"], after=start, timeout=30)
    finally:
        await app.stop()
        await first.stop()
        if second is not None:
            await second.stop()


class CuttableProxy:
    """A TCP proxy in front of PostgreSQL whose line we can cut and restore, as a network fault would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.base_events.Server | None = None
        self.pipes: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.pipes |= {writer, up_writer}

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for pipe in list(self.pipes):
            pipe.transport.abort()
        self.pipes.clear()
        await self.server.wait_closed()

    async def restore(self) -> None:
        await self.start()


async def test_messages_survive_a_database_outage(tmp_path: Path, clock: FakeClock, default_config_text: str,
                                                  scratch_pg_database: str) -> None:
    proxy = CuttableProxy(5432)
    await proxy.start()
    url = scratch_pg_database.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    async with Sandbox(load_world(None), token="db-outage-token") as sandbox:
        app = App(write_config(tmp_path, default_config_text, database_url=url),
                  puppet=PuppetTarget(sandbox.token, sandbox.endpoint), clock=clock, watch=False)
        app.handled = asyncio.Queue()
        await app.start()
        try:
            await app.wait_logged_in()
            await proxy.cut()
            reports = ["楼道闻到一股烟焦味!", "收到一条短信说法人信息到期"]
            ids = [await sandbox.say(f"wxid_res_0{n + 1}", t, room=JINXIU) for n, t in enumerate(reports)]
            # the messages arrive while the database is unreachable; restore it and they are handled
            await proxy.restore()
            seen = {}
            while len(seen) < len(ids):
                inbound, outcome = await asyncio.wait_for(app.handled.get(), 60)
                if inbound.message_id in ids:
                    seen[inbound.message_id] = outcome
            assert sorted(seen.values()) == ["incident:fire", "incident:scam_license_expiry"]
            await sandbox.wait_for(WANG, lambda m: m["from"] == BOT and "法人信息到期" in m["text"], timeout=30)
        finally:
            await app.stop()
            await proxy.cut()


async def test_flood_makes_one_incident_and_a_bounded_number_of_replies(env: Env) -> None:
    start = env.sandbox.log.last_seq
    texts = ["楼道好大的烟焦味！", "3楼冒烟了", "楼道闻到一股烟焦味!", "是不是着火了？烟很大", "快看楼道冒烟"]
    last = ""
    for number in range(300):
        sender = f"wxid_res_{number % 6 + 1:02d}"  # the residents of 锦绣
        last = await env.sandbox.say(sender, texts[number % len(texts)] + "!" * (number // 10 % 3), room=JINXIU)
    assert await env.outcome_of(last, timeout=120) in ("incident:joined:fire", "duplicate_text")
    later = await env.sandbox.say("wxid_res_01", "大家注意安全", room=JINXIU)
    assert await env.outcome_of(later, timeout=60) == "quiet"
    [incident] = await env.incidents()
    assert incident.category == "fire" and incident.report_count > 10
    await env.bot_says(WANG, start, "警情 #1")
    # every message has been handled, so the outbox holds everything the flood will ever cause
    assert env.app.station is not None
    async with env.app.station.db.session() as session:
        queued = Counter((r.conversation_id, r.kind) for r in (await session.scalars(select(OutboxMessage))).all())
    assert queued[(JINXIU, "reply")] == 1  # no reply per report
    assert queued[(WANG, "ping")] == 1  # one ping, not one per report


async def test_hostile_input_is_survived(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    weird = [
        resident_says("", "w1", clock),
        resident_says("火" * 100_000, "w2", clock),
        resident_says("\x00\x07\x1b[31m楼道\u202e着火\ufeff了", "w3", clock),
        resident_says("🔥🔥🔥🚒🚒", "w4", clock),
        Inbound(**{**resident_says("楼道着火了", "w5", clock, room="stranger@chatroom").__dict__,
                   "room_topic": "陌生群"}),  # a room not in the config
        Inbound(**{**resident_says("[图片]", "w6", clock).__dict__, "kind": "image"}),
    ]
    outcomes = [await pipeline.handle(station, item) for item in weird]
    assert outcomes[0] == "not_text" and outcomes[3] == "quiet" and outcomes[5] == "not_text"
    assert outcomes[2] == "incident:fire"  # control characters do not hide a report
    assert outcomes[4].startswith("incident:")  # an unknown room still reaches the duty officer
    async with database.session() as session:
        assert await session.scalar(select(func.count()).select_from(InboundMessage)) == len(weird)
        unknown = (await session.scalars(select(Incident).where(Incident.room_id == "stranger@chatroom"))).one()
    assert unknown.group_id is None and unknown.assigned_officers  # someone is pinged
    # and nothing else was disturbed
    assert await pipeline.handle(station, resident_says("一个三四岁的小男孩光着脚在外到处找妈妈", "w7", clock)) == \
        "incident:lost_child"


async def test_late_messages_still_count_and_say_so(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    late = Inbound(**{**resident_says("楼道闻到一股烟焦味!", "late-1", clock).__dict__,
                      "sent_at": clock() - timedelta(minutes=25)})
    assert await pipeline.handle(station, late) == "incident:fire"
    async with database.session() as session:
        from models.tables import OutboxMessage as Row

        rows = {r.kind: r.text for r in (await session.scalars(select(Row))).all()}
    assert "公号25分钟后才看到这条消息" in rows["reply"]
    assert "ping" in rows  # the officer is still pinged


async def test_same_sender_same_text_under_a_new_id_is_a_duplicate(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    assert await pipeline.handle(station, resident_says("今晚吃火锅吗", "a", clock)) == "quiet"
    assert await pipeline.handle(station, resident_says("今晚吃火锅吗", "b", clock)) == "duplicate_text"
    assert await pipeline.handle(station, resident_says("今晚吃火锅吗", "c", clock, sender="wxid_res_02")) == "quiet"
    clock.current += timedelta(minutes=3)  # outside the 2-minute window it is a new message
    assert await pipeline.handle(station, resident_says("今晚吃火锅吗", "d", clock)) == "quiet"


async def test_a_hung_puppet_service_is_detected_and_reconnected(tmp_path: Path, clock: FakeClock,
                                                                 default_config_text: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from wechaty_grpc.wechaty.puppet import DingResponse

    import bot.connection

    monkeypatch.setattr(bot.connection, "LIVENESS_PROBE_SECONDS", 0.2)
    monkeypatch.setattr(bot.connection, "LIVENESS_TIMEOUT_SECONDS", 1.0)

    sandbox = Sandbox(load_world(None), token="liveness-token-1")

    async def silent_ding(_request: object) -> DingResponse:  # answers, but no dong ever comes back
        return DingResponse()

    sandbox.puppet.rpc_ding = silent_ding  # type: ignore[method-assign]
    await sandbox.start()
    app = App(write_config(tmp_path, default_config_text), puppet=PuppetTarget(sandbox.token, sandbox.endpoint),
              clock=clock, watch=False)
    await app.start()
    connection = app.connection
    assert connection is not None
    try:
        async with connection.login_changed:
            await asyncio.wait_for(connection.login_changed.wait_for(lambda: connection.logins >= 2), 30)
        assert connection.liveness_failures >= 1 and connection.reconnects >= 1
    finally:
        await app.stop()
        await sandbox.stop()
