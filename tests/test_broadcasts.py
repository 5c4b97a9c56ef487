"""Anti-fraud warnings: who may send them, preview and confirmation, one delivery per group, pacing behind
urgent traffic, and finishing after a crash without sending any group twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.sandbox import Sandbox, load_world
from handlers import broadcasts, pipeline
from handlers.inbound import Inbound
from models.db import Database
from models.tables import Broadcast, BroadcastDelivery, OutboxMessage
from tests.conftest import BOT, JINXIU, ROOT, Env, FakeClock, write_config
from tests.test_storage import make_station, resident_says

ZHOU = {"sender": "wxid_officer_zhou", "name": "周警官", "room": None}
ROOMS = ["jinxiu@chatroom", "lianyang@chatroom", "fangdian@chatroom"]


async def deliveries(database: Database) -> list[BroadcastDelivery]:
    async with database.session() as session:
        return list((await session.scalars(select(BroadcastDelivery).order_by(BroadcastDelivery.id))).all())


async def test_draft_confirm_and_scope(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    outcome = await pipeline.handle(station, resident_says("预警【锦绣,芳甸】近期有人冒充客服退款", "w1", clock,
                                                            **ZHOU))
    assert outcome == "broadcast_draft"
    assert await deliveries(database) == []  # nothing queued before confirmation
    assert await pipeline.handle(station, resident_says("确认", "w2", clock, **ZHOU)) == "broadcast_confirmed"
    rows = await deliveries(database)
    assert [(d.group_id, d.status) for d in rows] == [("jinxiu", "queued"), ("fangdian", "queued")]
    assert await pipeline.handle(station, resident_says("确认", "w3", clock, **ZHOU)) == "broadcast_no_draft"
    assert len(await deliveries(database)) == 2  # a second 确认 sends nothing again


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_a_double_tapped_confirm_starts_once_and_the_second_finds_no_draft(
        database: Database, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two 确认 that both read the draft before either commits (held there until both have): one starts the
    warning, the other loses the draft to it and answers as if there were none, not "开始发送，共0个群"."""
    station = make_station(database, clock)
    await pipeline.handle(station, resident_says("预警 近期有人冒充客服退款", "w1", clock, **ZHOU))
    read_draft = broadcasts.latest_draft
    readers = 0
    both_read = asyncio.Event()

    async def latest_draft_together(*args: Any, **kwargs: Any) -> Broadcast | None:
        nonlocal readers
        draft = await read_draft(*args, **kwargs)
        readers += 1
        if readers == 2:
            both_read.set()
        await both_read.wait()
        return draft

    monkeypatch.setattr(broadcasts, "latest_draft", latest_draft_together)
    outcomes = await asyncio.gather(pipeline.handle(station, resident_says("确认", "w2", clock, **ZHOU)),
                                    pipeline.handle(station, resident_says("确认", "w3", clock, **ZHOU)))
    assert sorted(outcomes) == ["broadcast_confirmed", "broadcast_no_draft"]
    assert len(await deliveries(database)) == 3  # queued once
    async with database.session() as session:
        preview, *replies = (await session.scalars(select(OutboxMessage.text).where(
            OutboxMessage.kind == "command_reply", OutboxMessage.conversation_id == "wxid_officer_zhou")
            .order_by(OutboxMessage.id))).all()
    assert "近期有人冒充客服退款" in preview
    started = [text for text in replies if "开始发送" in text]
    assert len(started) == 1 and "共3个群" in started[0]
    assert replies.count(station.current.config.texts.broadcast_no_draft) == 1 and len(replies) == 2


async def test_a_delivery_settled_by_its_echo_finishes_the_broadcast(database: Database, clock: FakeClock) -> None:
    """A sender that died between sending a warning's last copy and recording it leaves the copy 'sending';
    when its echo settles it, the warning is finished and the officer told, as after a recorded send."""
    from bot import sender
    from models import outbox as queue

    station = make_station(database, clock)
    await pipeline.handle(station, resident_says("预警【锦绣】近期有人冒充客服退款", "w1", clock, **ZHOU))
    assert await pipeline.handle(station, resident_says("确认", "w2", clock, **ZHOU)) == "broadcast_confirmed"
    [delivery] = await deliveries(database)
    async with database.session() as session, session.begin():
        copy = await session.get(OutboxMessage, delivery.outbox_id)
        assert copy is not None and await queue.claim(session, copy.id, clock())  # then the sender dies
    echo = resident_says(copy.text, "echo-1", clock, room=copy.conversation_id, sender=BOT)
    assert await pipeline.handle(station, Inbound(**{**echo.__dict__, "is_self": True})) == "self"
    clock.current += queue.STALE_CLAIM
    await sender.settle_stale(station)
    [delivery] = await deliveries(database)
    assert delivery.status == "sent"
    async with database.session() as session:
        broadcast = (await session.scalars(select(Broadcast))).one()
        told = (await session.scalars(select(OutboxMessage).where(OutboxMessage.text.contains("发送完成")))).all()
    assert broadcast.status == "done"
    assert [(m.conversation_id, "成功1个群" in m.text) for m in told] == [("wxid_officer_zhou", True)]


async def test_a_broadcast_left_sending_with_every_delivery_settled_is_finished(database: Database,
                                                                                  clock: FakeClock) -> None:
    """A warning whose copies were all recorded but which was never closed (its sender died in between, or
    the old finishing race) is closed by the sender's periodic settling, and the officer told once."""
    from bot import sender
    from models import outbox as queue

    station = make_station(database, clock)
    await pipeline.handle(station, resident_says("预警【锦绣】近期有人冒充客服退款", "s1", clock, **ZHOU))
    assert await pipeline.handle(station, resident_says("确认", "s2", clock, **ZHOU)) == "broadcast_confirmed"
    [delivery] = await deliveries(database)
    async with database.session() as session, session.begin():  # recorded as sent, the broadcast not closed
        assert await queue.claim(session, delivery.outbox_id, clock())
        assert await queue.mark_sent(session, delivery.outbox_id, clock(), "m-1")
    await sender.settle_stale(station)
    await sender.settle_stale(station)  # a second pass (or another process) changes nothing
    async with database.session() as session:
        broadcast = (await session.scalars(select(Broadcast))).one()
        told = (await session.scalars(select(OutboxMessage).where(OutboxMessage.text.contains("发送完成")))).all()
    assert broadcast.status == "done"
    assert [(m.conversation_id, "成功1个群" in m.text) for m in told] == [("wxid_officer_zhou", True)]


async def test_only_rostered_warning_officers_may_broadcast(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    resident = {"sender": "wxid_res_01", "name": "张阿姨", "room": None}
    refused = await pipeline.handle(station, resident_says("预警 假消息", "r1", clock, **resident))
    assert refused == "refused_not_officer"
    wang = {"sender": "wxid_officer_wang", "name": "王警官", "room": None}  # a community officer
    assert await pipeline.handle(station, resident_says("预警 假消息", "r2", clock, **wang)) == "broadcast_refused"
    assert await pipeline.handle(station, resident_says("确认", "r3", clock, **wang)) == "broadcast_refused"
    async with database.session() as session:
        assert (await session.scalars(select(Broadcast))).all() == []


async def test_cancel_a_draft_and_unknown_groups(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    assert await pipeline.handle(station, resident_says("预警【不存在的群】内容", "w0", clock, **ZHOU)) == \
        "broadcast_unknown_groups"
    await pipeline.handle(station, resident_says("预警 内容", "w1", clock, **ZHOU))
    assert await pipeline.handle(station, resident_says("取消", "w2", clock, **ZHOU)) == "broadcast_cancelled"
    assert await pipeline.handle(station, resident_says("确认", "w3", clock, **ZHOU)) == "broadcast_no_draft"
    clock.current += timedelta(hours=2)
    await pipeline.handle(station, resident_says("预警 内容二", "w4", clock, **ZHOU))
    clock.current += timedelta(hours=2)  # drafts expire
    assert await pipeline.handle(station, resident_says("确认", "w5", clock, **ZHOU)) == "broadcast_no_draft"
    assert await deliveries(database) == []


async def test_scam_report_reaches_the_antifraud_team_and_becomes_a_draft(database: Database,
                                                                         clock: FakeClock) -> None:
    station = make_station(database, clock)
    await pipeline.handle(station, resident_says("收到一条短信说法人信息到期，让我点链接", "m1", clock))
    async with database.session() as session:
        summary = (await session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "scam_summary"))).one()
    assert summary.conversation_id == "wxid_officer_zhou" and "预警 草稿 1" in summary.text
    assert await pipeline.handle(station, resident_says("预警 草稿 1", "w1", clock, **ZHOU)) == "broadcast_draft"
    async with database.session() as session:
        draft = (await session.scalars(select(Broadcast))).one()
    assert "法人信息到期" in draft.text and len(draft.scope) == 3 and draft.source_incident_id == 1


async def test_confirmed_warning_reaches_every_group_once_and_the_sender_hears_back(env: Env) -> None:
    start = env.sandbox.log.last_seq
    await env.sandbox.say("wxid_officer_zhou", "预警 近期有人冒充“市场监管局”发短信说营业执照要注销，这是诈骗")
    preview = await env.bot_says("wxid_officer_zhou", start, "预警草稿")
    assert "3个群" in preview["text"]
    assert all(env.bot_messages(room, start) == [] for room in ROOMS)  # nothing before 确认
    await env.sandbox.say("wxid_officer_zhou", "确认")
    for room in ROOMS:
        await env.bot_says(room, start, "反诈预警")
    done = await env.bot_says("wxid_officer_zhou", start, "发送完成")
    assert "成功3个群" in done["text"]
    for room in ROOMS:
        assert len([m for m in env.bot_messages(room, start) if "反诈预警" in m["text"]]) == 1


async def test_pacing_and_an_urgent_report_overtaking_a_broadcast(tmp_path: Path, clock: FakeClock,
                                                                 default_config_text: str) -> None:
    import yaml

    from bot.app import App, PuppetTarget

    data = yaml.safe_load(default_config_text)
    data["outbox"] = {"private_interval": "0s"}  # group pacing as configured; private messages unpaced here
    async with Sandbox(load_world(None), token="pacing-test-token-1") as sandbox:
        app = App(write_config(tmp_path, yaml.safe_dump(data, allow_unicode=True), paced=True),
                  puppet=PuppetTarget(sandbox.token, sandbox.endpoint), clock=clock, watch=False)
        await app.start()
        try:
            await app.wait_logged_in()
            start = sandbox.log.last_seq

            def broadcast_rooms() -> list[str]:
                return [room for room in ROOMS for m in sandbox.messages(room, start)
                        if m["from"] == BOT and "反诈预警" in m["text"]]

            def warning(m: dict[str, object]) -> bool:
                return m["from"] == BOT and "反诈预警" in str(m["text"])

            await sandbox.say("wxid_officer_zhou", "预警 冒充客服退款是诈骗")
            await sandbox.wait_for("wxid_officer_zhou", lambda m: m["from"] == BOT and "预警草稿" in m["text"])
            await sandbox.say("wxid_officer_zhou", "确认")
            await sandbox.wait_for(ROOMS[0], warning, after=start)
            # the clock stands still: the next group message waits its turn (2.5 s + jitter)...
            await sandbox.say("wxid_res_01", "楼道着火了", room=JINXIU)
            await sandbox.wait_for("wxid_officer_wang", lambda m: m["from"] == BOT and "警情" in m["text"])
            assert len(broadcast_rooms()) == 1  # the ping was not held up by the paced broadcast
            clock.current += timedelta(seconds=3.6)
            app.station.outbox_ready.set()  # type: ignore[union-attr]
            reply = await sandbox.wait_for(JINXIU, lambda m: m["from"] == BOT and "119" in m["text"])
            # the urgent reply took the next group slot, ahead of the rest of the broadcast
            assert len(broadcast_rooms()) == 1 and reply["seq"] > start
            for room in ROOMS[1:]:  # the rest of the broadcast, one paced slot each, in group order
                clock.current += timedelta(seconds=3.6)
                app.station.outbox_ready.set()  # type: ignore[union-attr]
                await sandbox.wait_for(room, warning, after=start)
            assert sorted(broadcast_rooms()) == sorted(ROOMS)
        finally:
            await app.stop()


async def test_kill_9_mid_broadcast_then_restart_sends_each_group_once(tmp_path: Path,
                                                                      default_config_text: str) -> None:
    clock_file = tmp_path / "clock.txt"
    clock_file.write_text("2026-11-27T10:00:00+08:00", encoding="utf-8")
    config = write_config(tmp_path, default_config_text, paced=True)
    async with Sandbox(load_world(None), token="broadcast-restart-token") as sandbox:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WECHATY_")}
        env.update(WECHATY_PUPPET_SERVICE_TOKEN=sandbox.token, WECHATY_PUPPET_SERVICE_ENDPOINT=sandbox.endpoint,
                   GONGHAO_CLOCK_FILE=str(clock_file))

        log = (tmp_path / "bot.log").open("ab")

        async def start_bot() -> asyncio.subprocess.Process:
            process = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "main.py"), "--config", str(config), cwd=tmp_path, env=env,
                stdout=log, stderr=asyncio.subprocess.STDOUT)
            await sandbox.wait_connected(30)
            return process

        def sent_rooms() -> Counter[str]:
            return Counter(room for room in ROOMS for m in sandbox.messages(room)
                           if m["from"] == BOT and "反诈预警" in m["text"])

        bot = await start_bot()
        try:
            await sandbox.say("wxid_officer_zhou", "预警 冒充客服退款是诈骗")
            await sandbox.wait_for("wxid_officer_zhou", lambda m: m["from"] == BOT and "预警草稿" in m["text"],
                                   timeout=30)
            await sandbox.say("wxid_officer_zhou", "确认")
            await sandbox.wait_for(ROOMS[0], lambda m: m["from"] == BOT and "反诈预警" in m["text"], timeout=30)
            # An answer to a later private message proves the first delivery is recorded (the outbox records
            # each send before the next); the other groups wait their paced turn: kill the bot now.
            await sandbox.say("wxid_officer_zhou", "值班")
            await sandbox.wait_for("wxid_officer_zhou", lambda m: m["from"] == BOT and "在班" in m["text"], timeout=30)
        finally:
            bot.send_signal(signal.SIGKILL)
            await bot.wait()
        assert sent_rooms() == Counter({ROOMS[0]: 1})
        bot = await start_bot()
        try:
            for room in ROOMS[1:]:
                await sandbox.wait_for(room, lambda m: m["from"] == BOT and "反诈预警" in m["text"], timeout=60)
            done = await sandbox.wait_for("wxid_officer_zhou", lambda m: m["from"] == BOT and "发送完成" in m["text"],
                                          timeout=60)
            assert "成功3个群" in done["text"]
        finally:
            bot.send_signal(signal.SIGTERM)
            await asyncio.wait_for(bot.wait(), 30)
        assert sent_rooms() == Counter({room: 1 for room in ROOMS})
        log.close()
        assert sandbox.token not in (tmp_path / "bot.log").read_text(encoding="utf-8")  # no secret in logs


async def test_a_group_the_bot_has_left_is_skipped_and_recorded(env: Env) -> None:
    await env.sandbox.leave("fangdian@chatroom", BOT)
    start = env.sandbox.log.last_seq
    await env.sandbox.say("wxid_officer_zhou", "预警 冒充客服退款是诈骗")
    await env.bot_says("wxid_officer_zhou", start, "预警草稿")
    await env.sandbox.say("wxid_officer_zhou", "确认")
    done = await env.bot_says("wxid_officer_zhou", start, "发送完成")
    assert "成功2个群" in done["text"] and "跳过1个" in done["text"]
    assert env.app.station is not None
    async with env.app.station.db.session() as session:
        rows = {d.group_id: (d.status, d.reason) for d in (await session.scalars(select(BroadcastDelivery))).all()}
    assert rows["fangdian"] == ("skipped", "the bot is no longer in this group")
    assert rows["jinxiu"][0] == rows["lianyang"][0] == "sent"


def test_broadcasts_cli_lists_and_cancels(tmp_path: Path, default_config_text: str) -> None:
    import subprocess

    config = write_config(tmp_path, default_config_text)

    async def prepare() -> None:
        from models.migrate import upgrade

        database = Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'gonghao.db'}")
        await upgrade(database)
        clock = FakeClock(datetime.now(UTC))
        station = make_station(database, clock)
        await pipeline.handle(station, resident_says("预警 冒充客服退款是诈骗", "w1", clock, **ZHOU))
        await pipeline.handle(station, resident_says("确认", "w2", clock, **ZHOU))
        await database.close()

    asyncio.run(prepare())
    run = [sys.executable, str(ROOT / "main.py"), "broadcasts", "--config", str(config)]
    listed = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "#1 sending" in listed.stdout and "queued 3" in listed.stdout
    cancelled = subprocess.run([*run, "--cancel", "1"], capture_output=True, text=True, timeout=120)
    assert cancelled.returncode == 0 and "3 group(s) not sent" in cancelled.stdout
    listed = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert "#1 cancelled" in listed.stdout and "cancelled 3" in listed.stdout
