"""Inquiry tickets on real databases (a SQLite file and PostgreSQL) with a fake clock: opening (answer or
acknowledgement, ping), responses (in the group, through the bot), feedback and closing, reminders and the
breach with its one escalation, two processes and a restart, and the SLA report.

The handlers are called as the pipeline calls them, each in its own transaction, so these tests need no
wiring. Default settings: reminders 4 h and 20 h after the question, the promise 24 h, breach to the
supervisor. Friday 2026-11-27 10:00: 王警官 (锦绣's own officer) and the back office on shift.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

import models.tickets  # noqa: F401  (the tables: create_schema sees every imported model)
from bot.config.inquiry_schema import InquirySettings
from bot.config.loader import parse_config
from bot.config.schema import Config, OfficerConfig
from handlers import inquiries, sla, ticket_commands, tickets
from handlers.inbound import Inbound
from handlers.incidents import report
from handlers.runtime import ConfigVersion, Station
from handlers.tickets import run_due_tickets
from models.db import Database
from models.tables import Incident, OutboxMessage
from models.tickets import Ticket, TicketEvent
from tests.conftest import ROOT, FakeClock

JINXIU, FANGDIAN = "jinxiu@chatroom", "fangdian@chatroom"
RESIDENT = {"sender": "wxid_res_01", "name": "张阿姨"}
OTHER = {"sender": "wxid_res_02", "name": "老李"}


def config_text() -> str:
    """The default config, plus back-office officers (综合, 治安) on weekday shifts if it has none."""
    data = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    roles = {o["role"] for o in data["officers"]}
    for officer_id, name, role in (("qian", "钱警官", "general"), ("feng", "冯警官", "public_order")):
        if role not in roles:
            data["officers"].append({"id": officer_id, "name": name, "wechat_id": f"wxid_officer_{officer_id}",
                                     "role": role})
            data.setdefault("shifts", []).append({"officer": officer_id, "days": ["mon", "tue", "wed", "thu", "fri"],
                                                  "start": "08:30", "end": "17:30"})
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


CONFIG: Config = parse_config(config_text())
GENERAL = next(o for o in CONFIG.officers if o.role == "general")
WANG = CONFIG.officer("wang")
ZHAO = CONFIG.officer("zhao")
assert WANG is not None and ZHAO is not None


def make_station(database: Database, clock: FakeClock, config: Config = CONFIG) -> Station:
    return Station(ConfigVersion.build(config), database, clock)


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Use other inquiry settings than the config's, wired or not: ``settings(kb_answer_counts_as_response=True)``."""

    def use(**values: Any) -> InquirySettings:
        chosen = InquirySettings.model_validate(values)
        monkeypatch.setattr(tickets, "settings_of", lambda config: chosen)
        return chosen

    yield use


def says(text: str, clock: FakeClock, *, sender: str, name: str, room: str | None = JINXIU,
         mentions: tuple[str, ...] = (), mentions_bot: bool = False, message_id: str = "") -> Inbound:
    return Inbound(account="huamu", message_id=message_id or f"m-{text}-{clock().timestamp()}", sender_id=sender,
                   sender_name=name, room_id=room, room_topic=None, text=text, kind="text", mentions=mentions,
                   mentions_bot=mentions_bot, sent_at=clock())


async def ask(station: Station, clock: FakeClock, text: str, *, room: str = JINXIU, who: dict[str, str] = RESIDENT,
              **kwargs: Any) -> str | None:
    """A resident's group message, handled as the pipeline does when no route matched."""
    live = station.current
    inbound = says(text, clock, room=room, **who, **kwargs)
    async with station.db.session() as session, session.begin():
        return await inquiries.on_room_message(session, live, inbound, live.group_for(room, None), clock(), None)


async def officer_in_group(station: Station, clock: FakeClock, text: str, officer: OfficerConfig = WANG,
                           room: str = JINXIU, mentions: tuple[str, ...] = ()) -> str | None:
    live = station.current
    inbound = says(text, clock, sender=officer.wechat_id, name=officer.name, room=room, mentions=mentions)
    async with station.db.session() as session, session.begin():
        return await inquiries.on_officer_room_message(session, live, inbound, live.group_for(room, None), clock())


async def command(station: Station, clock: FakeClock, officer: OfficerConfig, text: str) -> tuple[str, list[str]]:
    """An officer's private 答 / 反馈 / 结 (as handle_private dispatches it once wired); returns the outcome
    and the replies to the officer."""
    live = station.current
    replies: list[str] = []
    async with station.db.session() as session, session.begin():
        parsed = ticket_commands.parse_ticket_command(text)
        if parsed is not None:
            outcome = await ticket_commands.handle_ticket_command(session, live, officer, parsed, clock(),
                                                                  replies.append)
        else:  # 结 N 结果
            _, number, result = text.split(" ", 2) + [""] * (3 - len(text.split(" ", 2)))
            ticket = await tickets.find_ticket(session, live.config.station.id, int(number))
            assert ticket is not None
            outcome = await ticket_commands.close_command(session, live, officer, ticket, result, clock(),
                                                          replies.append)
    return outcome, replies


async def all_tickets(database: Database) -> list[Ticket]:
    async with database.session() as session:
        return list((await session.scalars(select(Ticket).order_by(Ticket.id))).all())


async def one_ticket(database: Database) -> Ticket:
    [ticket] = await all_tickets(database)
    return ticket


async def outbox(database: Database, kind: str | None = None) -> list[OutboxMessage]:
    async with database.session() as session:
        query = select(OutboxMessage).order_by(OutboxMessage.id)
        if kind:
            query = query.where(OutboxMessage.kind == kind)
        return list((await session.scalars(query)).all())


async def events(database: Database) -> list[str]:
    async with database.session() as session:
        return [e.kind for e in (await session.scalars(select(TicketEvent).order_by(TicketEvent.id))).all()]


# -- opening ---------------------------------------------------------------------------------------------
async def test_faq_question_is_answered_at_once_and_the_officer_pinged(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    outcome = await ask(station, clock, "请问身份证丢了怎么办？")
    ticket = await one_ticket(database)
    assert outcome == f"inquiry_answered:{ticket.id}:id_card_lost"
    assert (ticket.status, ticket.category, ticket.kb_entry, ticket.detected_by) == (
        "open", "household", "id_card_lost", "question")
    assert ticket.assignee == GENERAL.id  # 户籍 goes to the 综合民警
    assert (ticket.created_at, ticket.due_at) == (clock(), clock() + timedelta(hours=24))
    assert ticket.reminder_at == clock() + timedelta(hours=4) and ticket.breach_at == ticket.due_at
    [reply] = await outbox(database, "inquiry_reply")
    assert (reply.conversation_id, reply.is_room, reply.mentions) == (JINXIU, True, ["wxid_res_01"])
    assert "身份证丢了怎么补办" in reply.text and "工本费40元" in reply.text
    assert "24小时内跟进答复" in reply.text and f"#{ticket.id}" in reply.text
    [ping] = await outbox(database, "inquiry_ping")
    assert ping.conversation_id == GENERAL.wechat_id and not ping.is_room
    for expected in (f"居民咨询 #{ticket.id}", "户籍证件", "锦绣小区平安群", "张阿姨", "请问身份证丢了怎么办？",
                     "公号已自动回复", f"答 {ticket.id}", f"结 {ticket.id}", "2026-11-28 10:00"):
        assert expected in ping.text
    assert await events(database) == ["opened", "assigned", "kb_answered", "pinged"]


async def test_question_without_an_answer_is_acknowledged(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    outcome = await ask(station, clock, "@花木派出所公号\u2005小区停车场的道闸坏了好几天，能帮忙反映一下吗",
                        mentions=("wxid_gonghao_bot",), mentions_bot=True)
    ticket = await one_ticket(database)
    assert outcome == f"inquiry_acknowledged:{ticket.id}"
    assert (ticket.kb_entry, ticket.category, ticket.assignee, ticket.detected_by) == (
        None, "general", "wang", "mentions_bot")
    [reply] = await outbox(database, "inquiry_reply")
    assert "已收到您的问题" in reply.text and "24小时内答复" in reply.text and "非工作时间" not in reply.text


async def test_off_shift_the_bot_still_answers_at_once(database: Database, clock: FakeClock) -> None:
    clock.set_local("2026-11-28 23:00")  # Saturday night: nobody of the back office on shift
    station = make_station(database, clock)
    assert (await ask(station, clock, "请问养狗要去派出所办证吗？")).startswith("inquiry_answered")
    assert (await ask(station, clock, "@王警官\u2005楼道里的灯坏了一周了", who=OTHER,
                      mentions=(WANG.wechat_id,))).startswith("inquiry_acknowledged")
    replies = await outbox(database, "inquiry_reply")
    assert len(replies) == 2
    assert "养犬登记" in replies[0].text and "非工作时间" in replies[0].text
    assert "已收到您的问题" in replies[1].text and "非工作时间" in replies[1].text
    assert len(await outbox(database, "inquiry_ping")) == 2  # pinged anyway: the reminders keep the clock honest


async def test_chatter_and_officers_do_not_open_tickets(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    assert await ask(station, clock, "明天几点停水？") is None
    assert await ask(station, clock, "谁家的快递？") is None
    assert await ask(station, clock, "派出所几点上班？", who={"sender": WANG.wechat_id, "name": WANG.name}) is None
    live = station.current
    inbound = says("派出所几点上班？", clock, room="unknown@chatroom", **RESIDENT)
    async with database.session() as session, session.begin():  # a room the config does not know
        assert await inquiries.on_room_message(session, live, inbound, None, clock(), None) is None
    assert await all_tickets(database) == [] and await outbox(database) == []


async def test_the_same_question_again_joins_the_open_ticket(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await ask(station, clock, "请问身份证丢了怎么办？")
    clock.current += timedelta(minutes=10)
    ticket = await one_ticket(database)
    assert await ask(station, clock, "身份证丢了怎么补办啊？？") == f"inquiry_repeated:{ticket.id}"
    assert len(await all_tickets(database)) == 1
    assert len(await outbox(database, "inquiry_ping")) == 1
    assert "已登记" in (await outbox(database, "inquiry_reply"))[-1].text
    # another question from the same resident is a ticket of its own
    assert (await ask(station, clock, "另外问一下，居住证积分怎么算？")).startswith("inquiry_answered")
    assert len(await all_tickets(database)) == 2


async def test_incidents_and_inquiries_share_one_number_space(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    live = station.current
    fire = says("楼道着火了", clock, **RESIDENT)
    decision = live.router.classify(fire.text, "jinxiu")
    async with database.session() as session, session.begin():
        incident, _ = await report(session, live, fire, live.group_for(JINXIU, None), decision.matches[0],
                                   clock(), None)
        incident_number = incident.id
    await ask(station, clock, "派出所几点上班？")
    ticket = await one_ticket(database)
    assert ticket.id == incident_number + 1
    async with database.session() as session:
        assert await tickets.find_ticket(session, "huamu", incident_number) is None
        assert await tickets.find_ticket(session, "huamu", ticket.id) is not None
        assert await tickets.find_ticket(session, "other_station", ticket.id) is None
        assert await session.get(Incident, ticket.id) is None


# -- responses -------------------------------------------------------------------------------------------
async def test_lifecycle_group_reply_then_close(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await ask(station, clock, "@王警官\u2005楼道里的灯坏了一周了，能跟物业说一下吗", mentions=(WANG.wechat_id,))
    await ask(station, clock, "派出所周六开门吗？", who=OTHER)
    first, second = await all_tickets(database)
    clock.current += timedelta(minutes=40)
    # an officer talking in the group to nobody in particular answers no ticket
    assert await officer_in_group(station, clock, "大家晚上好，注意关好门窗") is None
    outcome = await officer_in_group(station, clock, "@张阿姨\u2005已经跟物业说了，明天来修", mentions=("wxid_res_01",))
    assert outcome == f"inquiry_responded:{first.id}"
    first, second = await all_tickets(database)
    assert (first.status, first.responded_by, first.responded_via) == ("responded", "wang", "group")
    assert first.responded_at == clock() and first.reminder_at is None and first.breach_at is None
    assert second.status == "open"  # 老李's question is still waiting
    clock.current += timedelta(hours=3)
    outcome, replies = await command(station, clock, WANG, f"结 {first.id} 物业已换好灯泡")
    assert outcome == "inquiry_closed" and "已办结咨询" in replies[0]
    first = (await all_tickets(database))[0]
    assert (first.status, first.closed_by, first.result) == ("closed", "wang", "物业已换好灯泡")
    assert first.closed_at == clock() and not first.breached
    [result] = await outbox(database, "inquiry_result")
    assert result.conversation_id == JINXIU and result.mentions == ["wxid_res_01"]
    assert "已办结：物业已换好灯泡（王警官）" in result.text
    outcome, replies = await command(station, clock, WANG, f"结 {first.id} 再结一次")
    assert outcome == "inquiry_close_already" and "已经办结" in replies[0]


async def test_quotes_and_typed_names_count_as_responses(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await ask(station, clock, "请问派出所几点上班？")
    await ask(station, clock, "请问居住证积分怎么算？", who=OTHER)
    await ask(station, clock, "请问户口本丢了怎么补？", who={"sender": "wxid_res_03", "name": "小王妈妈"})
    clock.current += timedelta(hours=1)
    quote = "「老李：请问居住证积分怎么算？」\n- - - - - - - - - - - - - - -\n积分找单位人事申请"
    assert (await officer_in_group(station, clock, quote)).startswith("inquiry_responded:")
    assert (await officer_in_group(station, clock, "@小王妈妈 带身份证来户籍窗口")).startswith("inquiry_responded:")
    statuses = [(t.resident_name, t.status) for t in await all_tickets(database)]
    assert statuses == [("张阿姨", "open"), ("老李", "responded"), ("小王妈妈", "responded")]
    # an answer to someone without an open ticket, or from a resident, answers nothing
    assert await officer_in_group(station, clock, "@老李 不客气") is None
    live = station.current
    resident_reply = says("@张阿姨 我知道，九点上班", clock, **OTHER)
    async with database.session() as session, session.begin():
        assert await inquiries.on_officer_room_message(session, live, resident_reply, None, clock()) is None


async def test_private_answer_feedback_and_close(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await ask(station, clock, "我想开个无犯罪记录证明，出国用的，要公证吗？")
    ticket = await one_ticket(database)
    clock.current += timedelta(hours=2)
    outcome, replies = await command(station, clock, GENERAL, f"答 {ticket.id} 出国用的要先开证明再去公证处公证")
    assert outcome == "inquiry_answered" and "已把您的答复发到锦绣小区平安群" in replies[0]
    ticket = await one_ticket(database)
    assert (ticket.status, ticket.responded_by, ticket.responded_via) == ("responded", GENERAL.id, "private")
    [answer] = await outbox(database, "inquiry_answer")
    assert answer.conversation_id == JINXIU and answer.is_room and answer.mentions == ["wxid_res_01"]
    assert f"{GENERAL.name}答复（咨询 #{ticket.id}）：出国用的要先开证明再去公证处公证" in answer.text
    clock.current += timedelta(days=1)
    outcome, _ = await command(station, clock, GENERAL, f"反馈 {ticket.id} 证明已开好，可以来所里取")
    ticket = await one_ticket(database)
    assert outcome == "inquiry_feedback" and (ticket.status, ticket.feedback_by) == ("feedback", GENERAL.id)
    assert ticket.feedback_at == clock()
    assert "证明已开好" in (await outbox(database, "inquiry_feedback"))[0].text
    clock.current += timedelta(days=1)
    assert (await command(station, clock, GENERAL, f"结 {ticket.id} 居民已领取"))[0] == "inquiry_closed"
    ticket = await one_ticket(database)
    assert ticket.status == "closed" and ticket.responded_at == ticket.created_at + timedelta(hours=2)
    assert (await command(station, clock, GENERAL, f"答 {ticket.id} 还有事吗"))[0] == "inquiry_answer_closed"
    assert (await command(station, clock, GENERAL, "答 99999 你好"))[0] == "inquiry_answer_not_found"
    outcome, replies = await command(station, clock, GENERAL, f"答 {ticket.id}")
    assert outcome == "inquiry_answer_empty" and "请在编号后面写上内容" in replies[0]
    assert await events(database) == ["opened", "assigned", "kb_answered", "pinged", "responded", "answered",
                                      "feedback", "closed"]


async def test_closing_an_unanswered_ticket_is_its_response(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await ask(station, clock, "请问派出所几点上班？")
    ticket = await one_ticket(database)
    clock.current += timedelta(hours=1)
    assert (await command(station, clock, GENERAL, f"结 {ticket.id}"))[0] == "inquiry_closed"
    ticket = await one_ticket(database)
    assert (ticket.responded_at, ticket.responded_via, ticket.result) == (clock(), "close", "民警已答复处理")
    clock.current += timedelta(hours=30)
    tick = await run_due_tickets(station)
    assert (tick.reminders, tick.breaches) == (0, 0)


async def test_transfer_and_ack_redirect(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await ask(station, clock, "请问派出所几点上班？")
    ticket = await one_ticket(database)
    replies: list[str] = []
    chen = CONFIG.officer("chen")
    assert chen is not None
    async with database.session() as session, session.begin():
        found = await tickets.find_ticket(session, "huamu", ticket.id)
        assert found is not None
        assert await ticket_commands.transfer_command(session, station.current, GENERAL, found, chen, clock(),
                                              replies.append) == "inquiry_transferred"
        assert "不需要“收到”" in ticket_commands.ack_is_inquiry_text(station.current, found)
        lines = await ticket_commands.mine_lines(session, CONFIG, chen)
    assert replies == [f"咨询 #{ticket.id} 已转给陈警官。"]
    assert lines[0] == "您未办结的居民咨询：" and f"#{ticket.id}" in lines[1] and "待答复" in lines[1]
    transfer = [p for p in await outbox(database, "inquiry_ping") if p.conversation_id == chen.wechat_id]
    assert len(transfer) == 1 and "转给您" in transfer[0].text
    clock.current += timedelta(hours=4)
    await run_due_tickets(station)
    [reminder] = await outbox(database, "inquiry_reminder")
    assert reminder.conversation_id == chen.wechat_id  # the clock did not restart; the new assignee is reminded


# -- the clock -------------------------------------------------------------------------------------------
async def test_reminders_at_4_and_20_hours_then_one_breach(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await ask(station, clock, "请问派出所能开居住证明吗？")
    ticket = await one_ticket(database)
    clock.current += timedelta(hours=3, minutes=59)
    assert (await run_due_tickets(station)).reminders == 0
    clock.current += timedelta(minutes=1)
    assert (await run_due_tickets(station)).reminders == 1
    assert (await run_due_tickets(station)).reminders == 0  # once
    [reminder] = await outbox(database, "inquiry_reminder")
    assert reminder.conversation_id == GENERAL.wechat_id
    assert "已4小时未答复" in reminder.text and f"答 {ticket.id}" in reminder.text
    clock.current += timedelta(hours=16)
    assert (await run_due_tickets(station)).reminders == 1
    assert "已20小时未答复" in (await outbox(database, "inquiry_reminder"))[-1].text
    clock.current += timedelta(hours=3, minutes=59)
    tick = await run_due_tickets(station)
    assert (tick.reminders, tick.breaches) == (0, 0)
    clock.current += timedelta(minutes=1)  # 24 hours
    assert (await run_due_tickets(station)).breaches == 1
    for _ in range(3):
        clock.current += timedelta(hours=5)
        tick = await run_due_tickets(station)
        assert (tick.reminders, tick.breaches) == (0, 0)
    breaches = await outbox(database, "inquiry_breach")
    assert [b.conversation_id for b in breaches] == [ZHAO.wechat_id]  # the supervisor, exactly once
    assert f"咨询超时 #{ticket.id}" in breaches[0].text and f"负责民警：{GENERAL.name}" in breaches[0].text
    notes = await outbox(database, "inquiry_reminder")
    assert len(notes) == 3 and "已报告所领导" in notes[-1].text and notes[-1].conversation_id == GENERAL.wechat_id
    ticket = await one_ticket(database)
    assert ticket.breached and ticket.breached_at == ticket.created_at + timedelta(hours=24)
    assert ticket.status == "open"  # still waiting for an answer; the breach is on record
    assert (await events(database))[-4:] == ["reminded", "reminded", "breached", "escalated"]
    # answered at last: the response is recorded, the breach stays
    await command(station, clock, GENERAL, f"答 {ticket.id} 可以开，带身份证来")
    ticket = await one_ticket(database)
    assert ticket.status == "responded" and ticket.breached
    assert (await events(database)).count("breached") == 1


async def test_a_response_stops_the_clock(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await ask(station, clock, "请问派出所几点上班？")
    ticket = await one_ticket(database)
    clock.current += timedelta(hours=5)
    assert (await run_due_tickets(station)).reminders == 1
    await command(station, clock, GENERAL, f"答 {ticket.id} 工作日九点")
    clock.current += timedelta(days=3)
    tick = await run_due_tickets(station)
    assert (tick.reminders, tick.breaches) == (0, 0)
    assert not (await one_ticket(database)).breached


async def test_a_late_response_is_a_breach_even_if_no_timer_ran(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    await ask(station, clock, "请问派出所几点上班？")
    clock.current += timedelta(hours=30)
    ticket = await one_ticket(database)
    await command(station, clock, GENERAL, f"答 {ticket.id} 工作日九点")
    ticket = await one_ticket(database)
    assert ticket.breached and ticket.breached_at == ticket.due_at and ticket.breach_at is None
    assert (await run_due_tickets(station)).breaches == 0
    assert await outbox(database, "inquiry_breach") == []  # answered: nobody to chase
    assert (await events(database))[-3:] == ["responded", "breached", "answered"]


async def test_two_processes_take_each_reminder_and_the_breach_once(database: Database, clock: FakeClock) -> None:
    first, second = make_station(database, clock), make_station(database, clock)
    for number in range(3):
        await ask(first, clock, f"请问派出所几点上班？第{number}个问题", who={"sender": f"wxid_res_0{number + 1}",
                                                                     "name": f"居民{number}"})
    for hours in (4, 20, 24):
        clock.current = (await all_tickets(database))[0].created_at + timedelta(hours=hours)
        ticks = await asyncio.gather(*(run_due_tickets(s) for s in (first, second, first, second)))
        assert sum(t.reminders for t in ticks) == (3 if hours < 24 else 0)
        assert sum(t.breaches for t in ticks) == (3 if hours == 24 else 0)
    assert len(await outbox(database, "inquiry_breach")) == 3
    assert (await events(database)).count("reminded") == 6
    assert (await events(database)).count("breached") == 3


async def test_a_restart_loses_nothing(database: Database, clock: FakeClock) -> None:
    """A new Station on the same database (a restarted process) continues the clocks where they were."""
    before = make_station(database, clock)
    await ask(before, clock, "请问派出所几点上班？")
    await ask(before, clock, "请问居住证积分怎么算？", who=OTHER)
    clock.current += timedelta(hours=4)
    assert (await run_due_tickets(before)).reminders == 2
    del before
    clock.current += timedelta(hours=17)  # down from 4 h to 21 h: the 20 h reminders came due meanwhile
    after = make_station(database, clock)
    assert (await run_due_tickets(after)).reminders == 2  # one each, late rather than skipped
    assert (await run_due_tickets(after)).reminders == 0
    clock.current += timedelta(hours=3)
    assert (await run_due_tickets(after)).breaches == 2
    assert len(await outbox(database, "inquiry_breach")) == 2


async def test_downtime_past_the_deadline_gives_the_breach_not_stale_reminders(database: Database,
                                                                              clock: FakeClock) -> None:
    station = make_station(database, clock)
    await ask(station, clock, "请问派出所几点上班？")
    clock.current += timedelta(hours=30)
    tick = await run_due_tickets(make_station(database, clock))
    assert (tick.reminders, tick.breaches) == (0, 1)
    assert await outbox(database, "inquiry_reminder") != []  # the assignee's breach note
    assert all("已报告所领导" in r.text for r in await outbox(database, "inquiry_reminder"))


async def test_kb_answer_can_count_as_the_response(database: Database, clock: FakeClock, settings: Any) -> None:
    settings(kb_answer_counts_as_response=True)
    station = make_station(database, clock)
    await ask(station, clock, "请问派出所几点上班？")
    await ask(station, clock, "@王警官\u2005楼道灯坏了", who=OTHER, mentions=(WANG.wechat_id,))
    answered, acknowledged = await all_tickets(database)
    assert (answered.status, answered.responded_by, answered.responded_at) == ("responded", "kb", clock())
    assert answered.reminder_at is None and acknowledged.status == "open"
    clock.current += timedelta(hours=25)
    tick = await run_due_tickets(station)
    assert (tick.reminders, tick.breaches) == (0, 1)  # the unanswered one: its breach, not a stale reminder
    assert [t.breached for t in await all_tickets(database)] == [False, True]


async def test_custom_reminder_points_and_escalation(database: Database, clock: FakeClock, settings: Any) -> None:
    settings(sla="8h", reminders=["1h"], escalate_to=["supervisor", "duty"])
    station = make_station(database, clock)
    await ask(station, clock, "请问派出所几点上班？")
    clock.current += timedelta(hours=1)
    assert (await run_due_tickets(station)).reminders == 1
    clock.current += timedelta(hours=7)
    assert (await run_due_tickets(station)).breaches == 1
    breaches = await outbox(database, "inquiry_breach")
    assert sorted(b.conversation_id for b in breaches) == sorted([ZHAO.wechat_id, "wxid_officer_li"])
    assert "超过8小时" in breaches[0].text


async def test_nobody_with_the_role_falls_back_to_the_groups_officer(database: Database, clock: FakeClock) -> None:
    data = yaml.safe_load(config_text())
    data["officers"] = [o for o in data["officers"] if o["role"] not in ("general", "public_order")]
    data["shifts"] = [s for s in data["shifts"] if s["officer"] in {o["id"] for o in data["officers"]}]
    config = parse_config(yaml.safe_dump(data, allow_unicode=True))
    station = make_station(database, clock, config)
    await ask(station, clock, "请问身份证丢了怎么办？", room=FANGDIAN)
    ticket = await one_ticket(database)
    assert ticket.assignee == "chen" and "fell back to own" in ticket.assignee_reason


# -- the report ------------------------------------------------------------------------------------------
async def test_sla_report_on_a_known_set(database: Database, clock: FakeClock) -> None:
    station = make_station(database, clock)
    start = clock()
    # 锦绣 (王警官 unless 户籍): response after 1 h, 2 h, 30 h (late), none (breached); 芳甸 (陈警官): 3 h.
    plan = [("@王警官\u2005路灯坏了", JINXIU, 1), ("@王警官\u2005楼道堆物", JINXIU, 2),
            ("@王警官\u2005电瓶车乱停", JINXIU, 30), ("@王警官\u2005垃圾房很臭", JINXIU, None),
            ("@陈警官\u2005路口没有红绿灯", FANGDIAN, 3)]
    numbers = []
    for index, (text, room, _) in enumerate(plan):
        clock.current = start + timedelta(minutes=index)
        mention = WANG.wechat_id if room == JINXIU else "wxid_officer_chen"
        who = {"sender": f"wxid_res_0{index + 1}", "name": f"居民{index + 1}"}
        if room == FANGDIAN:
            who = {"sender": "wxid_res_06", "name": "赵老师"}
        await ask(station, clock, text, room=room, who=who, mentions=(mention,))
        numbers.append((await all_tickets(database))[-1].id)
    for index, (_, room, hours) in enumerate(plan):
        if hours is None:
            continue
        clock.current = start + timedelta(minutes=index, hours=hours)
        officer = WANG if room == JINXIU else CONFIG.officer("chen")
        assert officer is not None
        await command(station, clock, officer, f"答 {numbers[index]} 已处理")
        if index == 0:  # and the first is closed 5 hours after it was asked
            clock.current = start + timedelta(hours=5)
            await command(station, clock, officer, f"结 {numbers[index]} 已修好")
    clock.current = start + timedelta(days=2)
    async with database.session() as session:
        result = await sla.sla_report(session, CONFIG, since=start - timedelta(days=1), until=clock.current,
                                          now=clock.current)
    assert (result.total.inquiries, result.total.responded, result.total.closed) == (5, 4, 1)
    # responses in hours: 1, 2, 3, 30 -> median 2.5 h; p95 = 3 + 0.85 * 27 = 25.95 h
    assert result.total.response_median == 2.5 * 3600
    assert result.total.response_p95 == pytest.approx(25.95 * 3600)
    assert result.total.result_median == 5 * 3600
    assert result.total.breaches == [numbers[2], numbers[3]]
    [fangdian, jinxiu] = sorted(result.groups, key=lambda line: line.key)
    assert (jinxiu.label, jinxiu.inquiries, jinxiu.responded, jinxiu.unanswered) == ("锦绣小区平安群", 4, 3, 1)
    assert jinxiu.response_median == 2 * 3600 and jinxiu.breaches == [numbers[2], numbers[3]]
    assert (fangdian.inquiries, fangdian.response_median, fangdian.breaches) == (1, 3 * 3600, [])
    officers = {line.key: line for line in result.officers}
    assert set(officers) == {"wang", "chen"} and officers["wang"].inquiries == 4
    assert [b.ticket_id for b in result.breaches] == [numbers[2], numbers[3]]
    assert result.breaches[1].responded_at is None
    text = sla.format_sla_report(result)
    for expected in ("居民咨询答复时效 花木派出所（huamu）", "承诺时限 24 小时", "咨询 5，已答复 4，未答复 1，已办结 1",
                     "首次答复 中位 2小时30分 / P95 1天1小时", "锦绣小区平安群：咨询 4", "王警官：咨询 4",
                     f"超时 2（#{numbers[2]} #{numbers[3]}）", "超时明细（2 件）",
                     f"#{numbers[3]} 锦绣小区平安群 居民4", "至今未答复（已超时 23小时57分）", "（晚 6小时）"):
        assert expected in text, expected
    # a window that excludes them all
    async with database.session() as session:
        empty = await sla.sla_report(session, CONFIG, since=start + timedelta(days=1), until=clock.current,
                                         now=clock.current)
    assert empty.total.inquiries == 0 and "区间内没有居民咨询" in sla.format_sla_report(empty)


def test_percentiles_and_durations() -> None:
    assert sla.percentile([], 50) is None
    assert sla.percentile([5], 95) == 5
    assert sla.percentile([1, 2, 3, 4], 50) == 2.5
    assert sla.percentile([10, 0, 20], 95) == pytest.approx(19)
    assert [sla.format_duration(s) for s in (None, 59, 3600, 5400, 86400, 90000)] == [
        "—", "1分", "1小时", "1小时30分", "1天", "1天1小时"]


async def test_sla_report_from_the_config_database(tmp_path: Any, clock: FakeClock) -> None:
    """What ``main.py sla`` calls: opens the (migrated) database and reports; refuses an outdated one."""
    from models.migrate import SchemaOutdated, upgrade

    stale = Database(f"sqlite+aiosqlite:///{tmp_path / 'stale.db'}")
    await stale.create_schema()  # tables but no migration stamp: not something to report from
    await stale.close()
    with pytest.raises(SchemaOutdated):
        await sla.load_sla_report(CONFIG, since=clock(), until=clock() + timedelta(hours=1), now=clock(),
                                      database_url=f"sqlite+aiosqlite:///{tmp_path / 'stale.db'}")
    fresh = await sla.load_sla_report(CONFIG, since=clock(), until=clock() + timedelta(hours=1), now=clock(),
                                          database_url=f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    assert fresh.total.inquiries == 0  # a fresh database gets the schema, as the bot would give it
    url = f"sqlite+aiosqlite:///{tmp_path / 'sla.db'}"
    database = Database(url)
    await upgrade(database)
    station = make_station(database, clock)
    await ask(station, clock, "请问派出所几点上班？")
    await database.close()
    result = await sla.load_sla_report(CONFIG, since=clock() - timedelta(hours=1), until=clock() + timedelta(
        hours=1), now=clock() + timedelta(hours=25), database_url=url)
    assert result.total.inquiries == 1 and len(result.breaches) == 1
    again = Database(url)
    async with again.session() as session:
        assert await session.scalar(select(func.count()).select_from(Ticket)) == 1
    await again.close()

