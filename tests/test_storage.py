"""The handlers on real databases (a SQLite file and PostgreSQL): what one message stores and queues."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.config.loader import load_config
from handlers import pipeline
from handlers.inbound import Inbound
from handlers.runtime import ConfigVersion, Station
from models.db import Database
from models.tables import InboundMessage, Incident, IncidentEvent, OutboxMessage
from tests.conftest import ROOT, FakeClock, write_config


def make_station(database: Database, clock: FakeClock) -> Station:
    return Station(ConfigVersion.build(load_config(ROOT / "config.yaml")), database, clock)


def resident_says(text: str, message_id: str, clock: FakeClock, *, room: str | None = "jinxiu@chatroom",
                  sender: str = "wxid_res_01", name: str = "张阿姨") -> Inbound:
    return Inbound(account="huamu", message_id=message_id, sender_id=sender, sender_name=name, room_id=room,
                   room_topic="锦绣小区平安群" if room else None, text=text, kind="text", mentions=(),
                   mentions_bot=False, sent_at=clock())


async def outbox(database: Database) -> list[OutboxMessage]:
    async with database.session() as session:
        return list((await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all())


async def test_report_opens_incident_with_reply_ping_and_timeline(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    outcome = await pipeline.handle(station, resident_says("楼道闻到一股烟焦味!", "m1", clock))
    assert outcome == "incident:fire"
    async with database.session() as session:
        incident = (await session.scalars(select(Incident))).one()
        kinds = [e.kind for e in (await session.scalars(
            select(IncidentEvent).where(IncidentEvent.incident_id == incident.id).order_by(IncidentEvent.id)))]
        stored = (await session.scalars(select(InboundMessage))).one()
    assert (incident.category, incident.severity, incident.status) == ("fire", "P1", "open")
    assert incident.assigned_officers == ["wang"]  # Friday 10:00: the group's own officer is on shift
    assert incident.created_at == clock()
    assert kinds == ["reported", "replied", "pinged"]
    assert stored.outcome == "incident:fire" and stored.group_id == "jinxiu"
    rows = await outbox(database)
    assert [(r.conversation_id, r.kind) for r in rows] == [("jinxiu@chatroom", "reply"), ("wxid_officer_wang", "ping")]
    assert "119" in rows[0].text
    ping = rows[1].text
    for expected in (f"#{incident.id}", "锦绣小区平安群", "张阿姨", "楼道闻到一股烟焦味!", "2026-11-27 10:00",
                     f"收到 {incident.id}"):
        assert expected in ping


async def test_off_shift_report_goes_to_duty_officer(database: Database, clock: FakeClock) -> None:
    clock.set_local("2026-11-28 23:00")  # Saturday night
    station = make_station(database, clock)
    await pipeline.handle(station, resident_says("有人拿裸聊视频威胁我转钱", "m1", clock))
    rows = await outbox(database)
    assert [r.conversation_id for r in rows if r.kind == "ping"] == ["wxid_officer_li"]


async def test_same_message_twice_makes_one_incident(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    first, second = await asyncio.gather(
        pipeline.handle(station, resident_says("楼道着火了", "dup-1", clock)),
        pipeline.handle(station, resident_says("楼道着火了", "dup-1", clock)),
    )
    assert sorted([first, second]) == ["duplicate", "incident:fire"]
    assert await pipeline.handle(station, resident_says("楼道着火了", "dup-1", clock)) == "duplicate"
    async with database.session() as session:
        assert await session.scalar(select(func.count()).select_from(Incident)) == 1
        assert await session.scalar(select(func.count()).select_from(InboundMessage)) == 1


async def test_chit_chat_is_stored_but_quiet(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    assert await pipeline.handle(station, resident_says("今晚吃火锅吗", "m1", clock)) == "quiet"
    assert await pipeline.handle(station, resident_says("孩子放学了", "m2", clock)) == "quiet"
    assert await outbox(database) == []


async def test_officer_acknowledges_by_word_and_by_number(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await pipeline.handle(station, resident_says("楼道着火了", "m1", clock))
    await pipeline.handle(station, resident_says("一个小男孩光着脚在找妈妈", "m2", clock, sender="wxid_res_02"))
    clock.current += timedelta(minutes=2)
    officer = dict(sender="wxid_officer_wang", name="王警官", room=None)
    assert await pipeline.handle(station, resident_says("收到", "a1", clock, **officer)) == "ack_acknowledged"
    async with database.session() as session:
        incidents = {i.id: i for i in (await session.scalars(select(Incident))).all()}
    newest, oldest = max(incidents), min(incidents)
    assert incidents[newest].status == "acknowledged"  # "收到" takes the most recent unacknowledged one
    assert incidents[newest].acknowledged_by == "wang"
    assert incidents[newest].acknowledged_at == clock()
    assert incidents[oldest].status == "open"
    assert await pipeline.handle(station, resident_says(f"收到 {oldest}", "a2", clock, **officer)) == "ack_acknowledged"
    assert await pipeline.handle(station, resident_says(f"收到{oldest}", "a3", clock, **officer)) == "ack_already"
    assert await pipeline.handle(station, resident_says("收到 99999", "a4", clock, **officer)) == "ack_not_found"
    assert await pipeline.handle(station, resident_says("收到", "a5", clock, **officer)) == "ack_nothing_open"
    rows = await outbox(database)
    group_acks = [r for r in rows if r.kind == "ack"]
    assert len(group_acks) == 2 and all("王警官已接警" in r.text for r in group_acks)
    replies = [r.text for r in rows if r.kind == "command_reply"]
    assert replies[0].startswith("已确认接警")
    assert "没有找到警情 #99999" in replies[3]


async def test_resident_cannot_acknowledge(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await pipeline.handle(station, resident_says("楼道着火了", "m1", clock))
    # privately, and in the group
    assert await pipeline.handle(station, resident_says("收到", "r1", clock, room=None)) == "refused_not_officer"
    assert await pipeline.handle(station, resident_says("收到", "r2", clock)) == "quiet"
    async with database.session() as session:
        assert (await session.scalars(select(Incident))).one().status == "open"
    refusal = [r for r in await outbox(database) if r.conversation_id == "wxid_res_01" and not r.is_room]
    assert len(refusal) == 1 and "110" in refusal[0].text


async def test_bot_ignores_its_own_messages(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    echo = resident_says("楼道着火了", "self-1", clock, sender="wxid_gonghao_bot")
    assert await pipeline.handle(station, Inbound(**{**echo.__dict__, "is_self": True})) == "self"
    async with database.session() as session:
        assert await session.scalar(select(func.count()).select_from(InboundMessage)) == 0


async def test_repeated_reports_join_one_open_incident(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    assert await pipeline.handle(station, resident_says("楼道冒烟了", "m1", clock)) == "incident:fire"
    clock.current += timedelta(minutes=5)
    second = resident_says("3楼楼道好大的烟焦味", "m2", clock, sender="wxid_res_02", name="老李")
    assert await pipeline.handle(station, second) == "incident:joined:fire"
    async with database.session() as session:
        incident = (await session.scalars(select(Incident))).one()
        reporters = [e.actor for e in (await session.scalars(
            select(IncidentEvent).where(IncidentEvent.kind == "reported").order_by(IncidentEvent.id)))]
    assert reporters == ["wxid_res_01", "wxid_res_02"]
    assert incident.reporter_id == "wxid_res_01"  # the first reporter stays the incident's reporter
    rows = await outbox(database)
    assert [r.kind for r in rows].count("ping") == 1  # one ping, not one per report
    assert [r.kind for r in rows].count("reply") == 2  # but every resident hears back
    clock.current += timedelta(minutes=31)  # past the default 30-minute window: a new incident
    third = resident_says("又冒烟了", "m3", clock)
    assert await pipeline.handle(station, third) == "incident:fire"


async def test_interrupted_send_is_settled_by_its_echo_or_sent_again(database: Database, clock: FakeClock) -> None:
    """A sender killed between sending and recording leaves rows `sending`; the puppet's echo of the bot's own
    message proves it went out, otherwise it is queued again."""
    from models import outbox as queue
    from models.tables import OutboxMessage as Row

    station = make_station(database, clock)
    async with database.session() as session, session.begin():
        echoed = queue.enqueue_row(session, account="huamu", conversation_id="jinxiu@chatroom", is_room=True,
                                   text="回复甲", now=clock(), kind="reply", mentions=["wxid_res_01"])
        lost = queue.enqueue_row(session, account="huamu", conversation_id="jinxiu@chatroom", is_room=True,
                                 text="回复乙", now=clock(), kind="reply")
    async with database.session() as session, session.begin():
        assert await queue.claim(session, echoed.id, clock()) and await queue.claim(session, lost.id, clock())
        assert not await queue.claim(session, lost.id, clock())  # a second sender cannot take it
    # the echo of the first one comes back (with the @mention prefix the connection adds)
    echo = resident_says("@张阿姨\u2005回复甲", "echo-1", clock, sender="wxid_gonghao_bot")
    assert await pipeline.handle(station, Inbound(**{**echo.__dict__, "is_self": True})) == "self"
    clock.current += timedelta(seconds=30)
    async with database.session() as session, session.begin():
        assert await queue.reconcile_stale(session, "huamu", clock()) == (0, 0)  # too early to call it dead
    clock.current += timedelta(seconds=31)
    async with database.session() as session, session.begin():
        assert await queue.reconcile_stale(session, "huamu", clock()) == (1, 1)
    async with database.session() as session:
        states = {r.text: (r.status, r.sent_message_id) for r in (await session.scalars(select(Row))).all()}
    assert states == {"回复甲": ("sent", "echo-1"), "回复乙": ("pending", None)}


class HeldTransport:
    """A transport whose sends wait until the test lets them answer (with a message id, or an error)."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.sent: list[str] = []
        self.in_send = asyncio.Event()
        self.answer = asyncio.Event()
        self.error: Exception | None = None

    async def send(self, conversation_id: str, text: str, *, is_room: bool, mentions: list[str]) -> str | None:
        self.sent.append(text)
        self.in_send.set()
        await self.answer.wait()
        if self.error is not None:
            raise self.error
        return self.message_id

    async def is_member(self, room_id: str) -> bool:
        return True


async def _queue_ping(database: Database, clock: FakeClock) -> None:
    from models import outbox as queue

    async with database.session() as session, session.begin():
        queue.enqueue(session, account="huamu", conversation_id="wxid_officer_wang", is_room=False, text="请处理",
                      now=clock(), kind="ping")


async def test_a_send_without_answer_is_given_up_in_time_and_retried_later(
        database: Database, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A send must give up well before STALE_CLAIM: after that another process takes its row for a dead
    sender's and sends it again. Giving up counts as a failed attempt, retried after the usual backoff."""
    from bot import sender
    from models import outbox as queue

    assert sender.SEND_TIMEOUT * 3 <= queue.STALE_CLAIM
    monkeypatch.setattr(sender, "SEND_TIMEOUT", timedelta(milliseconds=50))  # the send below never answers
    station = make_station(database, clock)
    await _queue_ping(database, clock)
    never = HeldTransport("never")
    # (the outer bound only turns a hang into a failure)
    assert await asyncio.wait_for(sender.drain_once(station, never, sender.Pacer(station)), 30) is None
    [row] = await outbox(database)
    # retried no sooner than a late acceptance's echo would be back (see the next test)
    assert (row.status, row.attempts, row.not_before) == ("pending", 1, clock() + sender.UNANSWERED_RETRY_AFTER)
    assert sender.UNANSWERED_RETRY_AFTER > sender.backoff(1)
    assert row.last_error is not None and row.last_error.startswith("no answer within")
    assert never.sent == ["请处理"]


async def test_a_send_accepted_after_we_gave_up_is_not_sent_twice(
        database: Database, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service may accept a send after the sender stopped waiting for it; the bot's own message then comes
    back as an event. Before the retry sends again it looks for that echo: found, the row is recorded as sent
    under the echo's id; not found, it is sent again. An echo that already settled one row does not settle a
    second row with the same words."""
    from bot import sender

    monkeypatch.setattr(sender, "SEND_TIMEOUT", timedelta(milliseconds=50))
    station = make_station(database, clock)

    async def unanswered_then_retried(echo_id: str | None) -> tuple[OutboxMessage, list[str]]:
        await _queue_ping(database, clock)
        assert await asyncio.wait_for(sender.drain_once(station, HeldTransport("never"), sender.Pacer(station)),
                                      30) is None
        if echo_id is not None:  # the service sent it after all, and its echo came in
            echo = resident_says("请处理", echo_id, clock, room=None, sender="wxid_gonghao_bot")
            echo = Inbound(**{**echo.__dict__, "is_self": True, "to_id": "wxid_officer_wang"})
            assert await pipeline.handle(station, echo) == "self"
        clock.current += sender.UNANSWERED_RETRY_AFTER
        later = HeldTransport("msg-again")
        later.answer.set()
        assert await sender.drain_once(station, later, sender.Pacer(station)) is None
        return (await outbox(database))[-1], later.sent

    row, resent = await unanswered_then_retried("late-1")
    assert resent == []
    assert (row.status, row.sent_message_id, row.attempts) == ("sent", "late-1", 2)
    row, resent = await unanswered_then_retried(None)  # same words, same officer, no new echo
    assert resent == ["请处理"]
    assert (row.status, row.sent_message_id) == ("sent", "msg-again")


@pytest.mark.parametrize("late", ["failure", "success"])
async def test_a_late_answer_does_not_undo_another_senders_claim(
        database: Database, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, late: str) -> None:
    """A sender that answers after its row was taken over (queued again as stale and claimed by another
    process) records nothing: a late failure would put the row back in the queue for a third copy, a late
    success would mark it sent under the other sender's feet."""
    from bot import sender
    from models import outbox as queue

    monkeypatch.setattr(sender, "SEND_TIMEOUT", timedelta(minutes=10))  # the test decides when sends answer
    first, second, third = (make_station(database, clock) for _ in range(3))  # three processes, one account
    await _queue_ping(database, clock)
    slow, other, later = HeldTransport("msg-1"), HeldTransport("msg-2"), HeldTransport("msg-3")
    later.answer.set()
    sending = asyncio.create_task(sender.drain_once(first, slow, sender.Pacer(first)))
    await slow.in_send.wait()
    clock.current += queue.STALE_CLAIM
    await sender.settle_stale(second)  # no echo came back: queued again
    taking_over = asyncio.create_task(sender.drain_once(second, other, sender.Pacer(second)))
    await other.in_send.wait()
    slow.error = RuntimeError("connection reset") if late == "failure" else None
    slow.answer.set()
    assert await sending is None
    [row] = await outbox(database)
    assert (row.status, row.claimed_at, row.attempts, row.sent_message_id) == ("sending", clock(), 0, None)
    clock.current += sender.backoff(1)  # when a recorded late failure would have been retried
    assert await sender.drain_once(third, later, sender.Pacer(third)) is None
    assert later.sent == []
    other.answer.set()
    assert await taking_over is None
    [row] = await outbox(database)
    assert (row.status, row.attempts, row.sent_message_id) == ("sent", 1, "msg-2")


class PerConversationTransport:
    """Sends to the conversations in ``held`` wait until the test releases them; the others answer at once."""

    def __init__(self, held: set[str]) -> None:
        self.held = held
        self.release = asyncio.Event()
        self.started: list[str] = []  # texts, in the order their sends began
        self.finished: list[str] = []
        self._changed = asyncio.Event()

    async def send(self, conversation_id: str, text: str, *, is_room: bool, mentions: list[str]) -> str | None:
        self.started.append(text)
        self._changed.set()
        if conversation_id in self.held:
            await self.release.wait()
        self.finished.append(text)
        self._changed.set()
        return f"id-{text}"

    async def is_member(self, room_id: str) -> bool:
        return True

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


async def test_sends_to_other_conversations_do_not_wait_behind_a_slow_one(database: Database, clock: FakeClock,
                                                                          tmp_path: Path) -> None:
    """One round's sends overlap across conversations (a reply to one group does not queue behind the gRPC
    round trip of a ping to an officer); within a conversation they keep their order."""
    from bot import sender
    from models import outbox as queue

    unpaced = write_config(tmp_path, (ROOT / "config.yaml").read_text(encoding="utf-8"))
    station = Station(ConfigVersion.build(load_config(unpaced)), database, clock)
    async with database.session() as session, session.begin():
        for conversation, text in [("wxid_officer_wang", "请处理1"), ("jinxiu@chatroom", "回复甲"),
                                   ("wxid_officer_wang", "请处理2"), ("fangdian@chatroom", "回复乙")]:
            queue.enqueue(session, account="huamu", conversation_id=conversation, is_room=conversation.endswith(
                "@chatroom"), text=text, now=clock(), kind="reply", priority=queue.PRIORITY_URGENT)
    transport = PerConversationTransport(held={"wxid_officer_wang"})
    draining = asyncio.create_task(sender.drain_once(station, transport, sender.Pacer(station)))
    await transport.until(lambda: {"回复甲", "回复乙"} <= set(transport.finished))
    assert transport.started[:1] == ["请处理1"] and "请处理2" not in transport.started  # still behind 请处理1
    transport.release.set()
    assert await asyncio.wait_for(draining, 10) is None
    assert transport.started.index("请处理1") < transport.started.index("请处理2")
    assert {r.text: r.status for r in await outbox(database)} == dict.fromkeys(
        ["请处理1", "回复甲", "请处理2", "回复乙"], "sent")


async def _announce_urgent(station: Station, clock: FakeClock, conversation: str, text: str) -> None:
    """An urgent row committed and announced, as the intake does with a reply or a ping."""
    from models import outbox as queue

    async with station.db.session() as session, session.begin():
        queue.enqueue(session, account="huamu", conversation_id=conversation,
                      is_room=conversation.endswith("@chatroom"), text=text, now=clock(), kind="reply",
                      priority=queue.PRIORITY_URGENT)
    station.outbox_ready.set()


async def test_a_row_queued_during_a_slow_send_goes_out_without_waiting_for_that_round(
        database: Database, clock: FakeClock, tmp_path: Path) -> None:
    """Rounds overlap: a reply committed while a round's send to an officer hangs goes out at once, in a round
    of its own. A row for the officer queued meanwhile waits until the send before it has ended (order within
    a conversation), and the drain ends once every round has."""
    from bot import sender

    unpaced = write_config(tmp_path, (ROOT / "config.yaml").read_text(encoding="utf-8"))
    station = Station(ConfigVersion.build(load_config(unpaced)), database, clock)

    await _announce_urgent(station, clock, "wxid_officer_wang", "请处理1")
    transport = PerConversationTransport(held={"wxid_officer_wang"})
    draining = asyncio.create_task(sender.drain_once(station, transport, sender.Pacer(station)))
    await transport.until(lambda: transport.started == ["请处理1"])
    await _announce_urgent(station, clock, "wxid_officer_wang", "请处理2")
    await _announce_urgent(station, clock, "jinxiu@chatroom", "回复甲")
    await transport.until(lambda: "回复甲" in transport.finished)  # before this change: never, until released
    assert transport.started == ["请处理1", "回复甲"] and not draining.done()
    statuses = {r.text: r.status for r in await outbox(database)}
    assert (statuses["请处理1"], statuses["请处理2"]) == ("sending", "pending")
    transport.release.set()
    assert await asyncio.wait_for(draining, 10) is None
    assert transport.finished == ["回复甲", "请处理1", "请处理2"]
    assert {r.text: r.status for r in await outbox(database)} == dict.fromkeys(["请处理1", "请处理2", "回复甲"], "sent")


async def _draining_with_a_send_held(database: Database, clock: FakeClock, tmp_path: Path
                                     ) -> tuple[Station, PerConversationTransport, asyncio.Task[float | None]]:
    """A drain whose ping to officer Wang is on its way, held there until ``transport.release`` is set."""
    from bot import sender

    unpaced = write_config(tmp_path, (ROOT / "config.yaml").read_text(encoding="utf-8"))
    station = Station(ConfigVersion.build(load_config(unpaced)), database, clock)
    await _queue_ping(database, clock)
    transport = PerConversationTransport(held={"wxid_officer_wang"})
    draining = asyncio.create_task(sender.drain_once(station, transport, sender.Pacer(station)))
    await transport.until(lambda: transport.started == ["请处理"])
    return station, transport, draining


async def test_overlapping_rounds_share_one_cap_on_sends_at_once(database: Database, clock: FakeClock,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``CONCURRENT_SENDS`` bounds the sends in flight across rounds, not per round: with a cap of 2 and two
    hung sends in two rounds, a third conversation's send starts only once one of them has ended."""
    from bot import sender

    monkeypatch.setattr(sender, "CONCURRENT_SENDS", 2)
    unpaced = write_config(tmp_path, (ROOT / "config.yaml").read_text(encoding="utf-8"))
    station = Station(ConfigVersion.build(load_config(unpaced)), database, clock)
    gates = {name: asyncio.Event() for name in ("wxid_officer_wang", "wxid_officer_li", "jinxiu@chatroom")}
    transport = PerConversationTransport(held=set())
    seen_finished_at_start: dict[str, list[str]] = {}
    plain_send = transport.send

    async def gated_send(conversation_id: str, text: str, *, is_room: bool, mentions: list[str]) -> str | None:
        seen_finished_at_start[text] = list(transport.finished)
        transport._changed.set()
        await gates[conversation_id].wait()
        return await plain_send(conversation_id, text, is_room=is_room, mentions=mentions)

    monkeypatch.setattr(transport, "send", gated_send)

    await _announce_urgent(station, clock, "wxid_officer_wang", "甲")
    draining = asyncio.create_task(sender.drain_once(station, transport, sender.Pacer(station)))
    await transport.until(lambda: "甲" in seen_finished_at_start)
    await _announce_urgent(station, clock, "wxid_officer_li", "乙")
    await _announce_urgent(station, clock, "jinxiu@chatroom", "丙")
    await transport.until(lambda: len(seen_finished_at_start) >= 2)
    gates["wxid_officer_wang"].set()
    await transport.until(lambda: "丙" in seen_finished_at_start or "乙" in transport.finished)
    gates["wxid_officer_li"].set()
    gates["jinxiu@chatroom"].set()
    assert await asyncio.wait_for(draining, 10) is None
    # the second round's two sends: one started beside 甲, the other only after 甲 had finished
    assert sorted(len(seen_finished_at_start[text]) for text in ("乙", "丙")) == [0, 1]
    assert {r.text: r.status for r in await outbox(database)} == dict.fromkeys(["甲", "乙", "丙"], "sent")


async def test_cancelling_a_drain_ends_its_rounds_in_flight(database: Database, clock: FakeClock,
                                                            tmp_path: Path) -> None:
    """The bot stopping mid-send: no round outlives the drain; the row stays claimed ('sending') for the next
    start to settle by its echo or send again (``settle_stale``)."""

    _, _, draining = await _draining_with_a_send_held(database, clock, tmp_path)
    draining.cancel()
    with pytest.raises(asyncio.CancelledError):
        await draining
    assert [t.get_name() for t in asyncio.all_tasks() if t.get_name() == "outbox-round"] == []
    assert [r.status for r in await outbox(database)] == ["sending"]


async def test_a_failing_round_fails_the_drain_after_the_others_end(database: Database, clock: FakeClock,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A round whose record fails (the database, say) is reported by the drain (``run_sender`` logs it and
    tries again); a round to another conversation still in flight finishes its send and record first."""
    from models import outbox as queue

    station, transport, draining = await _draining_with_a_send_held(database, clock, tmp_path)
    real_mark = queue.mark_many_sent

    async def failing_mark(session: Any, sent: dict[int, str | None], *args: Any, **kwargs: Any) -> set[int]:
        if "id-回复甲" in sent.values():
            raise RuntimeError("disk I/O error")
        return await real_mark(session, sent, *args, **kwargs)

    monkeypatch.setattr(queue, "mark_many_sent", failing_mark)
    async with database.session() as session, session.begin():
        queue.enqueue(session, account="huamu", conversation_id="jinxiu@chatroom", is_room=True, text="回复甲",
                      now=clock(), kind="reply", priority=queue.PRIORITY_URGENT)
    station.outbox_ready.set()
    await transport.until(lambda: "回复甲" in transport.finished)
    assert not draining.done()  # the failed round waits for the one still sending
    transport.release.set()
    with pytest.raises(RuntimeError, match="disk I/O error"):
        await asyncio.wait_for(draining, 10)
    assert {r.text: r.status for r in await outbox(database)} == {"请处理": "sent", "回复甲": "sending"}


async def test_a_failed_read_lets_the_rounds_in_flight_finish(database: Database, clock: FakeClock,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database failing the next read (a hiccup) fails the drain, but only after the send already on its way
    has finished and been recorded: it is not cut short and left for the stale-claim check."""
    from models import outbox as queue

    station, transport, draining = await _draining_with_a_send_held(database, clock, tmp_path)

    async def failing_read(*args: Any, **kwargs: Any) -> list[Any]:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(queue, "next_pending", failing_read)
    station.outbox_ready.set()  # a row announced: the drain reads, and the read fails
    transport.release.set()
    with pytest.raises(RuntimeError, match="database is locked"):
        await asyncio.wait_for(draining, 10)
    assert transport.finished == ["请处理"]
    assert [r.status for r in await outbox(database)] == ["sent"]


async def test_the_per_minute_cap_on_group_messages_holds_across_rounds_and_processes(
        database: Database, clock: FakeClock, tmp_path: Path) -> None:
    """``outbox.group_per_minute`` counts the group messages every process of the account sent in the last
    minute: the third of three due rows waits for the minute to pass, in this process and in another."""
    import yaml

    from bot import sender
    from models import outbox as queue

    data = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    data["outbox"] = {"group_interval": "0s", "group_jitter": "0s", "private_interval": "0s", "group_per_minute": 2}
    config = load_config(write_config(tmp_path, yaml.safe_dump(data, allow_unicode=True), paced=True))
    first, second = (Station(ConfigVersion.build(config), database, clock) for _ in range(2))
    async with database.session() as session, session.begin():
        for room in ("jinxiu@chatroom", "fangdian@chatroom", "lianyang@chatroom"):
            queue.enqueue(session, account="huamu", conversation_id=room, is_room=True, text=f"提醒 {room}",
                          now=clock(), kind="reply")
    transport = PerConversationTransport(held=set())
    assert await sender.drain_once(first, transport, sender.Pacer(first)) == 5.0  # capped: look again in 5 s
    assert len(transport.finished) == 2
    clock.current += timedelta(seconds=30)
    assert await sender.drain_once(second, transport, sender.Pacer(second)) == 5.0  # counts the first's sends
    assert len(transport.finished) == 2
    clock.current += timedelta(seconds=31)
    assert await sender.drain_once(second, transport, sender.Pacer(second)) is None
    assert transport.finished == [f"提醒 {room}" for room in ("jinxiu@chatroom", "fangdian@chatroom",
                                                             "lianyang@chatroom")]


async def test_the_per_minute_cap_counts_group_sends_still_in_flight(database: Database, clock: FakeClock,
                                                                     tmp_path: Path) -> None:
    """The caps are counted again from the database once a second, but a round in flight has not recorded its
    sends yet: they count all the same, so overlapping rounds cannot exceed ``group_per_minute``."""
    import yaml

    from bot import sender

    data = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    data["outbox"] = {"group_interval": "0s", "group_jitter": "0s", "private_interval": "0s", "group_per_minute": 2}
    config = load_config(write_config(tmp_path, yaml.safe_dump(data, allow_unicode=True), paced=True))
    station = Station(ConfigVersion.build(config), database, clock)
    await _announce_urgent(station, clock, "jinxiu@chatroom", "回复甲")
    await _announce_urgent(station, clock, "fangdian@chatroom", "回复乙")
    transport = PerConversationTransport(held={"jinxiu@chatroom", "fangdian@chatroom"})
    draining = asyncio.create_task(sender.drain_once(station, transport, sender.Pacer(station)))
    await transport.until(lambda: set(transport.started) == {"回复甲", "回复乙"})
    clock.current += sender.CAPS_RECOUNT * 2  # the next read counts the caps again
    await _announce_urgent(station, clock, "lianyang@chatroom", "回复丙")
    await _announce_urgent(station, clock, "wxid_officer_li", "请处理")
    await transport.until(lambda: "请处理" in transport.started)  # read and planned in the same round as 丙
    assert "回复丙" not in transport.started
    transport.release.set()
    assert await asyncio.wait_for(draining, 10) == 5.0  # 丙 waits for the minute to pass
    assert {r.text: r.status for r in await outbox(database)} == {"回复甲": "sent", "回复乙": "sent",
                                                                  "回复丙": "pending", "请处理": "sent"}


async def test_the_oldest_unsent_urgent_row_is_aged_on_either_database(database: Database,
                                                                        clock: FakeClock) -> None:
    """``gonghao_outbox_oldest_urgent_seconds`` reads MIN(created_at) of the replies and pings not sent yet
    (a timestamp that must come back as one, on SQLite and PostgreSQL alike); broadcast copies do not count."""
    from handlers.metrics import ConnectionFigures, Metrics
    from models import outbox as queue

    station = make_station(database, clock)
    metrics = Metrics()
    gauge = "gonghao_outbox_oldest_urgent_seconds"
    await metrics.refresh(station, ConnectionFigures())
    assert metrics.registry.get_sample_value(gauge) == 0
    async with database.session() as session, session.begin():
        queue.enqueue(session, account="huamu", conversation_id="jinxiu@chatroom", is_room=True, text="预警",
                      now=clock() - timedelta(hours=3), kind="broadcast")
        queue.enqueue(session, account="huamu", conversation_id="wxid_officer_wang", is_room=False,
                      text="请处理", now=clock() - timedelta(seconds=75), kind="ping",
                      priority=queue.PRIORITY_URGENT)
    await metrics.refresh(station, ConnectionFigures())
    assert metrics.registry.get_sample_value(gauge) == 75


async def test_a_row_committed_during_a_round_is_sent_before_the_round_ends(database: Database, clock: FakeClock,
                                                                           tmp_path: Path) -> None:
    """A round that took everything pending ends without reading again, unless a row was announced
    meanwhile (``outbox_ready``): then it looks again and sends that one too."""
    from bot import sender
    from models import outbox as queue

    unpaced = write_config(tmp_path, (ROOT / "config.yaml").read_text(encoding="utf-8"))
    station = Station(ConfigVersion.build(load_config(unpaced)), database, clock)
    await _queue_ping(database, clock)

    class QueuesAnotherWhileSending(HeldTransport):
        async def send(self, conversation_id: str, text: str, *, is_room: bool, mentions: list[str]) -> str | None:
            self.sent.append(text)
            if len(self.sent) == 1:  # the intake commits a new ping while the first is on its way
                async with database.session() as session, session.begin():
                    queue.enqueue(session, account="huamu", conversation_id="wxid_officer_li", is_room=False,
                                  text="又一条", now=clock(), kind="ping")
                station.outbox_ready.set()
            return f"id-{len(self.sent)}"

    transport = QueuesAnotherWhileSending("unused")
    assert await sender.drain_once(station, transport, sender.Pacer(station)) is None
    assert transport.sent == ["请处理", "又一条"]
    assert [(r.status, r.sent_message_id) for r in await outbox(database)] == [("sent", "id-1"), ("sent", "id-2")]


async def test_recording_a_rounds_sends_at_once_skips_rows_taken_over(database: Database, clock: FakeClock) -> None:
    """``mark_many_sent`` records the rows still held by the round's claim, each with its own message id,
    and leaves a row another sender has claimed since to that sender."""
    from models import outbox as queue

    async with database.session() as session, session.begin():
        rows = [queue.enqueue_row(session, account="huamu", conversation_id=f"wxid_officer_{k}", is_room=False,
                              text=f"请处理{k}", now=clock(), kind="ping") for k in range(3)]
    ids = [row.id for row in rows]
    claimed_at = clock()
    async with database.session() as session, session.begin():
        assert await queue.claim_many(session, ids, claimed_at) == set(ids)
    later = claimed_at + queue.STALE_CLAIM
    async with database.session() as session, session.begin():  # the last row is queued again and taken over
        await queue.release(session, [ids[2]], claimed_at)
        assert await queue.claim_many(session, [ids[2]], later) == {ids[2]}
    async with database.session() as session, session.begin():
        recorded = await queue.mark_many_sent(session, {ids[0]: "m-0", ids[1]: None, ids[2]: "m-2"}, later,
                                              claimed_at=claimed_at)
    assert recorded == {ids[0], ids[1]}
    assert [(r.status, r.sent_message_id, r.attempts) for r in await outbox(database)] == [
        ("sent", "m-0", 1), ("sent", None, 1), ("sending", None, 0)]
