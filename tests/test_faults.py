"""Faults, each really done: the puppet service goes away and comes back, the database connection is cut,
hostile input, a flood of reports. The bot must survive each, lose nothing and not spam."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.app import App, PuppetTarget
from bot.sandbox import Sandbox, load_world
from bot.sender import run_sender
from bot.wechaty_compat import prepare
from handlers import pipeline
from handlers.inbound import Inbound
from handlers.runtime import Station
from models.db import Database
from models.tables import EchoReceipt, InboundMessage, Incident, OutboxMessage
from tests.conftest import BOT, FANGDIAN, JINXIU, WANG, Env, FakeClock, with_payload_helper, write_config
from tests.test_storage import make_station, outbox, resident_says


@pytest.mark.parametrize("payload_helper", [False, True], ids=["in-process", "payload-helper"])
async def test_bot_reconnects_when_the_puppet_service_comes_back(
    tmp_path: Path, clock: FakeClock, default_config_text: str, payload_helper: bool
) -> None:
    token = "reconnect-test-token"
    first = Sandbox(load_world(None), token=token)
    await first.start()
    port = first.grpc_port
    config_path = write_config(tmp_path, with_payload_helper(default_config_text, payload_helper))
    app = App(config_path, puppet=PuppetTarget(token, first.endpoint), clock=clock, watch=False)
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
        helper = app.connection.payload_helper
        answered = helper.answered if helper is not None else 0
        start = second.log.last_seq
        await second.say("wxid_res_02", "一个三四岁的小男孩光着脚在外到处找妈妈", room=JINXIU)
        await second.wait_for(JINXIU, lambda m: m["from"] == BOT and "孩子" in m["text"], after=start, timeout=30)
        if payload_helper:  # the helper's own channel found the service again too
            assert helper is not None and helper.running and helper.answered > answered
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


async def test_a_message_routing_fails_on_is_stored_not_lost(database: Database, clock: FakeClock,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in routing (here: the router raising) must not lose the message: it is stored with the outcome
    "error" (and logged), and the next message is routed as usual."""
    station = make_station(database, clock)
    router = station.current.router
    original = router.classify

    def broken(text: str, *args: object, **kwargs: object) -> object:
        if "坏" in text:
            raise RuntimeError("a routing bug")
        return original(text, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(router, "classify", broken)
    assert await pipeline.handle(station, resident_says("楼道坏了好像着火了", "bug-1", clock)) == "error"
    assert await pipeline.handle(station, resident_says("楼道闻到一股烟焦味!", "bug-2", clock)) == "incident:fire"
    async with database.session() as session:
        stored = {m.message_id: m.outcome for m in (await session.scalars(select(InboundMessage))).all()}
    assert stored == {"bug-1": "error", "bug-2": "incident:fire"}


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


class OwnLogWatch(logging.Handler):
    """Collects what our own code (``bot.*``, ``handlers.*``) logs, so that a test can wait for a line instead of
    guessing when it was written: python-wechaty handles each event in its own task, in no promised order."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in ("bot", "handlers") and record.levelno >= logging.WARNING:
            self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")
            self._changed.set()

    async def wait_for(self, needle: str, timeout: float = 10) -> str:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = next((line for line in self.lines if needle in line), None)
                    if found is not None:
                        return found
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"nothing logged about {needle!r} in {timeout} s; logged: {self.lines}") from None


async def test_a_message_the_service_cannot_find_is_logged_and_nothing_else_is_disturbed(env: Env) -> None:
    """A message event whose payload the puppet service then cannot find (MessagePayload answers NOT_FOUND,
    as for a message withdrawn between event and fetch), between two ordinary reports."""
    connection = env.app.connection
    assert connection is not None and env.app.station is not None
    watch = OwnLogWatch()
    logging.getLogger().addHandler(watch)
    try:
        start = env.sandbox.log.last_seq
        first = await env.sandbox.say("wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)
        assert await env.outcome_of(first) == "incident:fire"
        missing = env.sandbox.emit_unknown_message()
        second = await env.sandbox.say("wxid_res_02", "一个三四岁的小男孩光着脚在外到处找妈妈", room=JINXIU)
        assert await env.outcome_of(second) == "incident:lost_child"  # handled as usual, right after it
        await env.bot_says(JINXIU, start, "孩子")
        await env.bot_says(WANG, start, "警情 #2")
        logged = await watch.wait_for(missing)
        assert "NOT_FOUND" in logged, logged
    finally:
        logging.getLogger().removeHandler(watch)
    # the event stream stayed up: no reconnect, no second login
    assert connection.logins == 1 and connection.reconnects == 0 and connection.state == "connected"
    # the phantom never reached the pipeline; both real reports did
    async with env.app.station.db.session() as session:
        stored = set((await session.scalars(select(InboundMessage.message_id))).all())
    assert missing not in stored and {first, second} <= stored
    assert [i.category for i in await env.incidents()] == ["fire", "lost_child"]


class CutOffTransport:
    """The sender's side of a link whose connection dies in the middle of the first send. The stuck call is woken
    exactly as grpclib wakes it when the connection is lost: its ``Wrapper`` is cancelled with
    ``StreamTerminatedError``, which cancels the calling task and raises the error in its place."""

    def __init__(self) -> None:
        from grpclib.utils import Wrapper

        self.wrapper = Wrapper()
        self.in_call = asyncio.Event()
        self.sent: list[str] = []
        self._changed = asyncio.Event()

    async def send(self, conversation_id: str, text: str, *, is_room: bool, mentions: list[str]) -> str | None:
        if not self.in_call.is_set():
            self.in_call.set()
            with self.wrapper:
                await asyncio.Event().wait()  # the answer that never comes
        self.sent.append(conversation_id)
        self._changed.set()
        return f"sent-{len(self.sent)}"

    async def is_member(self, room_id: str) -> bool:
        return True

    async def wait_sent(self, count: int, timeout: float = 10) -> None:
        try:
            async with asyncio.timeout(timeout):
                while len(self.sent) < count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{len(self.sent)} sends within {timeout} s, expected {count}") from None


async def test_a_send_cut_off_by_a_lost_connection_does_not_end_the_outbox_sender(database: Database,
                                                                                   clock: FakeClock) -> None:
    """A connection lost during a send leaves that row to retry; the sender goes on with the others and sends it
    later. (grpclib left the sender's task "cancelling", so the sender took the failed send for a stop and ended
    for good: nothing was sent again, even after reconnecting. bot/wechaty_compat.py takes that cancel back.)"""
    from grpclib.exceptions import StreamTerminatedError

    prepare(Path(tempfile.gettempdir()) / "gonghao-test-wechaty")  # the shims, as loading python-wechaty applies
    station = make_station(database, clock)
    assert await pipeline.handle(station, resident_says("楼道闻到一股烟焦味!", "cut-1", clock)) == "incident:fire"
    transport = CutOffTransport()
    connected = asyncio.Event()
    connected.set()
    sender = asyncio.create_task(run_sender(station, transport, connected))
    try:
        await asyncio.wait_for(transport.in_call.wait(), 10)
        transport.wrapper.cancel(StreamTerminatedError("Connection lost"))
        await transport.wait_sent(1)  # the other row goes on (the sender did not end)
        # the failure is recorded (its retry time set) before the clock moves
        await until_outbox(station, lambda rows: any(r.attempts == 1 and r.status == "pending" for r in rows))
        clock.current += timedelta(minutes=5)  # the cut-off row's retry (and any pacing) is due
        station.outbox_ready.set()
        await transport.wait_sent(2)
        # the sender records a send just after the call returns
        rows = await until_outbox(station, lambda rows: [r.status for r in rows] == ["sent", "sent"])
        assert not sender.done() and sender.cancelling() == 0
        assert [(r.attempts, (r.last_error or "").split(":")[0]) for r in rows if r.attempts > 1] == \
            [(2, "StreamTerminatedError")]
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(sender, 10)
    assert sender.cancelled()  # and a real stop still stops it


async def test_a_send_stuck_at_the_service_does_not_hold_up_a_reply_to_another_group(env: Env) -> None:
    """The puppet service hangs on every send to one group. A report in that group is stored, its reply's send
    hangs; a report in another group meanwhile gets its reply at once (before this, it waited behind the
    stuck send for up to ``SEND_TIMEOUT``). Once the service recovers, the stuck reply goes out, once."""
    stuck = asyncio.Event()
    env.sandbox.puppet.send_holds[JINXIU] = stuck
    start = env.sandbox.log.last_seq
    await env.sandbox.say("wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)
    await env.bot_says(WANG, start, "烟焦味")  # the ping went out: the report is handled, its reply stuck
    assert env.bot_messages(JINXIU, start) == []
    await env.sandbox.say("wxid_res_08", "楼道闻到一股烟焦味!", room=FANGDIAN)
    await env.bot_says(FANGDIAN, start, "119", timeout=5)
    assert env.bot_messages(JINXIU, start) == []
    stuck.set()
    await env.bot_says(JINXIU, start, "119")
    assert len(env.bot_messages(JINXIU, start)) == 1


async def test_a_send_the_service_answers_too_late_goes_out_once(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The puppet service posts the reply to a report but answers only after the sender stopped waiting. The
    bot's own message comes back as an event; the retry finds that echo and records the reply as sent under
    its id instead of posting it a second time."""
    from bot import sender

    monkeypatch.setattr(sender, "SEND_TIMEOUT", timedelta(milliseconds=300))
    env.sandbox.puppet.answer_delay["MessageSendText"] = 2.0
    start = env.sandbox.log.last_seq
    await env.sandbox.say("wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)
    posted = await env.bot_says(JINXIU, start, "119")
    assert env.app.station is not None
    # the sender gave up on the answer and set the retry's time
    await until_outbox(env.app.station, lambda rows: any(r.kind == "reply" and r.attempts == 1 for r in rows))
    await env.outcome_of(posted["id"])  # and the echo of what the service did post has been stored
    assert await _echo_stored(env, posted["id"])
    env.sandbox.puppet.answer_delay.clear()
    env.clock.current += sender.UNANSWERED_RETRY_AFTER  # the retry is due
    env.app.station.outbox_ready.set()
    rows = await until_outbox(env.app.station, lambda rows: any(r.kind == "reply" and r.status == "sent"
                                                                for r in rows))
    reply = next(r for r in rows if r.kind == "reply")
    assert (reply.attempts, reply.sent_message_id) == (2, posted["id"])
    assert len(env.bot_messages(JINXIU, start)) == 1


async def until_outbox(station: Station, holds: Callable[[list[OutboxMessage]], bool],
                       timeout: float = 10) -> list[OutboxMessage]:
    """The outbox's rows once ``holds`` is true of them, looked at again each time the sender records a round."""
    async with asyncio.timeout(timeout):
        while True:
            station.outbox_recorded.clear()  # before the look: a round recorded after it wakes the wait
            rows = await outbox(station.db)
            if holds(rows):
                return rows
            await station.outbox_recorded.wait()


async def _echo_stored(env: Env, message_id: str) -> bool:
    assert env.app.station is not None
    async with env.app.station.db.session() as session:
        return await session.scalar(select(func.count()).select_from(EchoReceipt)
                                    .where(EchoReceipt.message_id == message_id)) == 1
