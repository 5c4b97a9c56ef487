"""Several processes of ONE station (same config, same bot account, same puppet service, same PostgreSQL
database) all hear every message and all run the timers and the sender; they compete for the same rows and
never act twice: one incident per report, one group reply and one ping per incident, one ping per escalation
step and officer, one acknowledgement, one copy of a warning per group."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, select

from bot.sandbox import Sandbox, load_world
from models.db import Database
from models.tables import (
    Broadcast,
    BroadcastDelivery,
    InboundMessage,
    Incident,
    IncidentEvent,
    IncidentStatus,
    OutboxMessage,
    OutboxStatus,
)
from tests.conftest import BOT, CHEN, FANGDIAN, JINXIU, ROOT, WANG, FakeClock, write_config
from tests.test_cli_run import _env, _read_until

PROCESSES = 3
LIANYANG = "lianyang@chatroom"
LI, ZHAO, ZHOU = "wxid_officer_li", "wxid_officer_zhao", "wxid_officer_zhou"
ROOMS = (JINXIU, LIANYANG, FANGDIAN)
# Three reports, one per group, each matching exactly one route (checked with `main.py route`).
REPORTS = {
    JINXIU: ("wxid_res_01", "楼道闻到一股烟焦味!", "fire"),  # P1: steps at 3 and 13 minutes
    LIANYANG: ("wxid_res_09", "我家老人早上出门到现在没回来，走丢了", "missing_elderly"),  # P1
    FANGDIAN: ("wxid_res_08", "有人打电话说我涉嫌洗钱，让我把钱转到安全账户", "scam_safe_account"),  # P2: 15, 45
}
WARNING = "近期有人冒充电商客服打电话说要退款，让您扫码或开屏幕共享的都是诈骗"


class ScriptedClock:
    """The bots' clock (GONGHAO_CLOCK_FILE): a local time written to the file that then runs on in real
    time in every process; ``now`` is that same time as seen from here."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._clock = FakeClock(datetime.now(UTC))
        self._set_at = time.monotonic()

    def set_local(self, text_time: str) -> None:
        self._clock.set_local(text_time)
        self.path.write_text(self._clock.current.isoformat(), encoding="utf-8")
        self._set_at = time.monotonic()

    def now(self) -> datetime:
        return self._clock.current + timedelta(seconds=time.monotonic() - self._set_at)


@dataclass
class BotProcess:
    """One `python main.py` of the station, its output drained all the time (a full pipe would stall it)."""

    process: asyncio.subprocess.Process
    output: list[str] = field(default_factory=list)
    metrics_url: str = ""
    drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, config: Path, cwd: Path, env: dict[str, str]) -> BotProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "main.py"), "--config", str(config), cwd=cwd, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        return cls(process)

    async def wait_online(self, timeout: float) -> None:
        """Until it has logged in and serves its admin web (port 0: its own), whose /metrics we read."""
        assert self.process.stdout is not None
        await _read_until(self.process.stdout, "公号已上线", self.output, timeout)
        line = await _read_until(self.process.stdout, r"admin web: \S+", self.output, timeout)
        self.metrics_url = line.split("admin web:", 1)[1].strip().rstrip("/") + "/metrics"
        self.drain = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.output.append(line.decode("utf-8", "replace"))

    async def handled(self, http: aiohttp.ClientSession) -> Counter[str]:
        """How many messages this process's pipeline has handled, by outcome (its Prometheus counters)."""
        async with http.get(self.metrics_url) as response:
            assert response.status == 200, await response.text()
            text = await response.text()
        found = re.findall(r'^gonghao_messages_handled_total\{outcome="([^"]+)"\} (\S+)$', text, re.M)
        return Counter({outcome: int(float(value)) for outcome, value in found})

    async def stop(self) -> None:
        """SIGTERM, and SIGKILL if that does not end it in time: no process outlives the test."""
        if self.drain is None:  # it failed to come up: still drain, or a full pipe could block its exit
            self.drain = asyncio.create_task(self._drain())
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        with suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.drain, 5)


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 30,
                explain: Callable[[], Awaitable[str]] | None = None) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` (and the state, via ``explain``) at the deadline."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            state = await explain() if explain else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}. {state}")
        await asyncio.sleep(0.05)


async def count(database: Database, model: type[Any]) -> int:
    async with database.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def bot_messages(sandbox: Sandbox) -> Iterator[dict[str, Any]]:
    conversations = [room.id for room in sandbox.world.rooms] + [contact.id for contact in sandbox.world.contacts]
    for conversation in conversations:
        yield from (m for m in sandbox.messages(conversation) if m["from"] == BOT)


def said(sandbox: Sandbox, conversation: str, pattern: str) -> int:
    """How many times the bot said something matching ``pattern`` in ``conversation``."""
    return sum(1 for m in sandbox.messages(conversation) if m["from"] == BOT and re.search(pattern, m["text"]))


async def bot_says(sandbox: Sandbox, conversation: str, pattern: str) -> dict[str, Any]:
    return await sandbox.wait_for(
        conversation, lambda m: m["from"] == BOT and re.search(pattern, m["text"]) is not None, timeout=20)


async def test_same_station_processes_never_act_twice(tmp_path: Path, default_config_text: str,
                                                      scratch_pg_database: str) -> None:
    clock = ScriptedClock(tmp_path / "clock.txt")
    clock.set_local("2026-11-27 10:00")  # a Friday morning: community officers on shift, 李警官 on day duty
    config = write_config(tmp_path, default_config_text.replace("tick_seconds: 5", "tick_seconds: 0.2"),
                          scratch_pg_database)
    database = Database(scratch_pg_database)
    bots: list[BotProcess] = []
    async with Sandbox(load_world(None), token="same-station-token-1") as sandbox, aiohttp.ClientSession() as http:
        env = _env(WECHATY_PUPPET_SERVICE_TOKEN=sandbox.token, WECHATY_PUPPET_SERVICE_ENDPOINT=sandbox.endpoint,
                   GONGHAO_CLOCK_FILE=str(clock.path))

        async def idle() -> bool:
            """Every process has handled every message the service delivered (its own echoes too), nothing
            waits in the outbox or is being sent, and no escalation step is due: nothing can still happen
            until the clock moves or somebody speaks.

            The order matters: a message's effects commit before it counts as handled, and a step taken
            leaves a due incident or pending rows in whichever of the two queries comes after it; the log
            not growing meanwhile means no send (hence no unhandled echo) slipped in between."""
            seen = sandbox.log.last_seq
            for bot in bots:
                if sum((await bot.handled(http)).values()) != seen:
                    return False
            async with database.session() as session:
                due = await session.scalar(select(func.count()).select_from(Incident).where(
                    Incident.status == IncidentStatus.open, Incident.next_step_at <= clock.now()))
                unsent = await session.scalar(select(func.count()).select_from(OutboxMessage).where(
                    OutboxMessage.status.in_([OutboxStatus.pending, OutboxStatus.sending])))
            return not due and not unsent and sandbox.log.last_seq == seen

        async def state() -> str:
            async with database.session() as session:
                rows = (await session.execute(select(OutboxMessage.status, func.count())
                                              .group_by(OutboxMessage.status))).all()
            return (f"outbox {dict(rows)}; log {sandbox.log.last_seq} entries; handled per process "
                    f"{[dict(await bot.handled(http)) for bot in bots]}")

        async def settle() -> None:
            await until(idle, "all processes to be idle", explain=state)

        try:
            # The first process creates the schema; the others start together once it is in.
            bots.append(await BotProcess.start(config, tmp_path, env))
            await bots[0].wait_online(60)
            for _ in range(PROCESSES - 1):
                bots.append(await BotProcess.start(config, tmp_path, env))
            await asyncio.gather(*(bot.wait_online(60) for bot in bots[1:]))
            # Each process holds its own event stream, so each hears every message.
            await sandbox.puppet.wait_state(lambda: sandbox.puppet.stream_count == PROCESSES, 30,
                                            f"{PROCESSES} bot processes listening")

            # -- three reports at once: one incident, one reply and one ping each ---------------------------
            await asyncio.gather(*(sandbox.say(who, text, room=room) for room, (who, text, _) in REPORTS.items()))
            for room in ROOMS:
                await bot_says(sandbox, room, "^@")  # the reply @-mentions the reporter
            # a reply is sent only after the transaction that opened its incident committed
            async with database.session() as session:
                incidents = {i.room_id: i for i in (await session.scalars(select(Incident))).all()}
            assert {room: i.route_id for room, i in incidents.items()} == {r: v[2] for r, v in REPORTS.items()}
            fire, elderly, scam = (incidents[room].id for room in ROOMS)
            for officer, number in ((WANG, fire), (WANG, elderly), (CHEN, scam)):
                await bot_says(sandbox, officer, rf"^【警情 #{number}】")
            await bot_says(sandbox, ZHOU, rf"^【诈骗线索 #{scam}】")
            await settle()
            for room in ROOMS:
                assert said(sandbox, room, "") == 1, [m["text"] for m in sandbox.messages(room)]
            for officer, number in ((WANG, fire), (WANG, elderly), (CHEN, scam)):
                assert said(sandbox, officer, rf"^【警情 #{number}】") == 1
            assert said(sandbox, ZHOU, rf"^【诈骗线索 #{scam}】") == 1

            # -- step 1 of the urgent chain (3 min) comes due in all processes at once ------------------------
            clock.set_local("2026-11-27 10:04")
            for officer in (WANG, LI, ZHAO):  # covering, duty, supervisor
                for number in (fire, elderly):
                    await bot_says(sandbox, officer, rf"^【警情升级 #{number}】")
            await settle()
            for officer in (WANG, LI, ZHAO):
                for number in (fire, elderly):
                    assert said(sandbox, officer, rf"^【警情升级 #{number}】") == 1
            assert said(sandbox, CHEN, "警情升级") == 0  # the scam's chain (15 min) is not due

            # -- two officers acknowledge the fire at the same moment: one wins, the group hears it once ---------
            await asyncio.gather(sandbox.say(WANG, f"收到 {fire}"), sandbox.say(LI, f"收到 {fire}"))
            await bot_says(sandbox, JINXIU, rf"已接警（#{fire}）")
            await settle()
            assert said(sandbox, JINXIU, rf"已接警（#{fire}）") == 1
            acked = {officer: said(sandbox, officer, rf"^已确认接警 #{fire}") for officer in (WANG, LI)}
            already = {officer: said(sandbox, officer, rf"^警情 #{fire} 已由") for officer in (WANG, LI)}
            assert sorted(acked.values()) == [0, 1] and {o: 1 - n for o, n in acked.items()} == already

            # -- the elderly report's step 2 (13 min, overdue) and the scam's step 1 (15 min); the fire is acked --
            clock.set_local("2026-11-27 10:16")
            for officer in (WANG, LI, ZHAO):
                await bot_says(sandbox, officer, rf"^【警情升级 #{elderly}】.*（已超时）")
            for officer in (CHEN, LI):  # the normal chain: covering, duty
                await bot_says(sandbox, officer, rf"^【警情升级 #{scam}】")
            await settle()
            for officer in (WANG, LI, ZHAO):
                assert said(sandbox, officer, rf"^【警情升级 #{elderly}】") == 2
                assert said(sandbox, officer, rf"^【警情升级 #{elderly}】.*（已超时）") == 1
                assert said(sandbox, officer, rf"^【警情升级 #{fire}】") == 1  # acknowledged: no step 2
            for officer in (CHEN, LI):
                assert said(sandbox, officer, rf"^【警情升级 #{scam}】") == 1

            # -- the anti-fraud officer warns every group: one draft, one confirmation, one copy per group ------
            await sandbox.say(ZHOU, f"预警 {WARNING}")
            preview = await bot_says(sandbox, ZHOU, "^【预警草稿 #")
            assert "将发送到3个群" in preview["text"]
            # a double tap: two confirmations at once, possibly handled by two processes at the same time
            await asyncio.gather(sandbox.say(ZHOU, "确认"), sandbox.say(ZHOU, "确认"))
            done = await bot_says(sandbox, ZHOU, r"^预警 #\d+ 发送完成")
            assert "成功3个群" in done["text"] and "失败" not in done["text"]
            await settle()
            for room in ROOMS:
                assert said(sandbox, room, f"反诈预警】{re.escape(WARNING)}$") == 1
            for pattern in ("^【预警草稿 #", r"^预警 #\d+ 开始发送，共3个群", r"^预警 #\d+ 发送完成"):
                assert said(sandbox, ZHOU, pattern) == 1
            # The other confirmation finds no draft left, or (when it read the draft while the first was still
            # committing) loses the conditional claim and queues nothing: "共0个群".
            assert said(sandbox, ZHOU, r"^没有待确认的预警草稿|^预警 #\d+ 开始发送，共0个群") == 1

            # -- the whole account of what was said, and what each process did ---------------------------
            per_conversation = Counter(m["conversation"] for m in bot_messages(sandbox))
            assert per_conversation == {
                JINXIU: 3, LIANYANG: 2, FANGDIAN: 2,  # reply, (ack,) warning
                WANG: 6,  # 2 pings, 2 step-1 and 1 step-2 escalations, the ack's answer
                LI: 5,  # 2 step-1, 1 step-2 and the scam's step-1 escalations, the ack's answer
                ZHAO: 3, CHEN: 2, ZHOU: 5,  # scam lead, preview, two answers to 确认, done
            }
            humans = await count(database, InboundMessage)
            assert humans == len(REPORTS) + 2 + 3  # reports, two acks, 预警 and two 确认
            handled = [await bot.handled(http) for bot in bots]
            for outcomes in handled:  # every process heard every message and every echo...
                assert outcomes["self"] == sum(per_conversation.values()), handled
                assert sum(outcomes.values()) == sandbox.log.last_seq, handled
            # ...and for each message exactly one of them acted; the others found it stored already
            total = sum(handled, Counter[str]())
            assert total["duplicate"] == (PROCESSES - 1) * humans, handled
            assert sum(n for outcome, n in total.items() if outcome not in ("self", "duplicate")) == humans, handled

            async with database.session() as session:
                outbox = (await session.scalars(select(OutboxMessage))).all()
                events = Counter((e.incident_id, e.kind) for e in (await session.scalars(select(IncidentEvent))).all())
                incidents = {i.id: i for i in (await session.scalars(select(Incident))).all()}
                [broadcast] = (await session.scalars(select(Broadcast))).all()
                deliveries = (await session.scalars(select(BroadcastDelivery))).all()
            # every bot message in the service is exactly one outbox row, sent once
            assert all(row.status == OutboxStatus.sent and row.attempts == 1 for row in outbox)
            assert sorted(row.sent_message_id or "" for row in outbox) == sorted(m["id"] for m in bot_messages(sandbox))
            assert events[(fire, "escalated")] == 1 and events[(elderly, "escalated")] == 2
            assert events[(scam, "escalated")] == 1
            assert events[(fire, "acknowledged")] == 1 and events[(fire, "group_told")] == 1
            assert all(events[(number, "replied")] == 1 for number in (fire, elderly, scam))
            assert incidents[fire].status == IncidentStatus.acknowledged
            assert incidents[fire].acknowledged_by == ("wang" if acked[WANG] else "li")
            assert broadcast.status == "done"
            assert sorted((d.room_id, d.status) for d in deliveries) == sorted((room, "sent") for room in ROOMS)
        finally:
            await asyncio.gather(*(bot.stop() for bot in bots))
            await database.close()
    outputs = ["".join(bot.output) for bot in bots]
    for output in outputs:
        assert "Traceback" not in output, output[-3000:]
        # a process that lost its stream could have missed messages the test counts on it to have heard
        assert "connection lost" not in output, output[-3000:]
        assert sandbox.token not in output
    assert [bot.process.returncode for bot in bots] == [0] * PROCESSES, outputs

