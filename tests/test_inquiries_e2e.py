"""Inquiries end to end: the sandbox's puppet service and the real bot over gRPC, on a controlled clock.

A resident's question gets an answer (or an acknowledgement) in the group at once, the officer responsible a
private ping; an unanswered one produces reminders and a breach escalated to the supervisor as the clock moves;
an officer's reply in the group counts as the response; "答" and "结" in private answer and close through the
bot. Residents and officers speak through the sandbox's API; we wait on the messages the bot sends back.

The bot runs the default config plus a 综合民警 and a 治安民警 (added, with sandbox contacts, if the config
has none), as in tests/test_tickets.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

import models.tickets  # noqa: F401  (the tables)
from bot.app import App, PuppetTarget
from bot.sandbox import Contact, Sandbox, World, load_world
from handlers.tickets import run_due_tickets
from models.tickets import Ticket, TicketEvent
from tests.conftest import BOT, FANGDIAN, JINXIU, WANG, Env, FakeClock, write_config
from tests.test_tickets import config_text

ZHAO, LI = "wxid_officer_zhao", "wxid_officer_li"
CONFIG_DATA = yaml.safe_load(config_text())
GENERAL, GENERAL_NAME = next((o["wechat_id"], o["name"]) for o in CONFIG_DATA["officers"] if o["role"] == "general")
BOT_MENTION = "@花木派出所公号\u2005"


def world_with_every_officer() -> World:
    world = load_world(None)
    known = {c.id for c in world.contacts}
    extra = [Contact(o["wechat_id"], o["name"], role="officer", title="后台民警")
             for o in CONFIG_DATA["officers"] if o["wechat_id"] not in known]
    return World(world.bot, [*world.contacts, *extra], world.rooms)


@pytest.fixture
async def inq_env(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Env]:
    """Like the ``env`` fixture (conftest), with the back-office officers in the config and the sandbox."""
    sandbox = Sandbox(world_with_every_officer(), token="inquiry-e2e-token-01")
    await sandbox.start()
    config_path = write_config(tmp_path, config_text())
    app = App(config_path, puppet=PuppetTarget(sandbox.token, sandbox.endpoint), clock=clock, watch=False)
    app.handled = asyncio.Queue()
    try:
        await app.start()
        await app.wait_logged_in()
        yield Env(sandbox, app, clock, config_path)
    finally:
        await app.stop()
        await sandbox.stop()


def last_seq(env: Env) -> int:
    return env.sandbox.log.last_seq


async def tickets_of(env: Env) -> list[Ticket]:
    assert env.app.station is not None
    async with env.app.station.db.session() as session:
        return list((await session.scalars(select(Ticket).order_by(Ticket.id))).all())


async def event_kinds(env: Env, ticket_id: int) -> list[str]:
    assert env.app.station is not None
    async with env.app.station.db.session() as session:
        return [e.kind for e in (await session.scalars(
            select(TicketEvent).where(TicketEvent.ticket_id == ticket_id).order_by(TicketEvent.id))).all()]


def move_clock(env: Env, delta: timedelta) -> None:
    env.clock.current += delta
    env.app.timers_wake.set()


async def ask(env: Env, text: str, *, sender: str = "wxid_res_01", room: str = JINXIU,
              mentions: tuple[str, ...] = ()) -> tuple[str, int]:
    """A resident asks in a group; returns the pipeline's outcome and the ticket number (0 if none)."""
    message_id = await env.sandbox.say(sender, text, room=room, mentions=mentions)
    outcome = await env.outcome_of(message_id)
    number = int(outcome.split(":")[1]) if outcome.startswith("inquiry_") else 0
    return outcome, number


async def test_faq_question_gets_the_answer_in_the_group(inq_env: Env) -> None:
    env = inq_env
    start = last_seq(env)
    outcome, number = await ask(env, "请问身份证丢了怎么办？")
    assert outcome == f"inquiry_answered:{number}:id_card_lost"
    reply = await env.bot_says(JINXIU, start, "补领")
    assert reply["text"].startswith("@张阿姨") and reply["mentions"] == ["wxid_res_01"]
    for expected in ("身份证丢了怎么补办", "工本费40元", "临时身份证", f"#{number}", "24小时内跟进答复"):
        assert expected in reply["text"]
    ping = await env.bot_says(GENERAL, start, "居民咨询")
    for expected in (f"#{number}", "户籍证件", "锦绣小区平安群", "张阿姨", "请问身份证丢了怎么办？", f"答 {number}"):
        assert expected in ping["text"]
    assert env.bot_messages(WANG, start) == []  # 户籍 is the back office's, not the community officer's


async def test_neighbour_talk_and_reports_are_not_inquiries(inq_env: Env) -> None:
    env = inq_env
    start = last_seq(env)
    for sender, text in (("wxid_res_02", "明天几点停水？"), ("wxid_res_03", "谁家的快递？放在3楼楼道里"),
                         ("wxid_res_04", "派出所旁边新开的面馆好吃吗？")):
        message_id = await env.sandbox.say(sender, text, room=JINXIU)
        assert await env.outcome_of(message_id) == "quiet"
    outcome, _ = await ask(env, "楼道着火了，怎么办？", sender="wxid_res_05")
    assert outcome == "incident:fire"  # a report is an incident, never an inquiry
    await env.bot_says(JINXIU, start, "119")
    assert len(env.bot_messages(JINXIU, start)) == 1  # only the fire reply: nothing for the chatter
    assert await tickets_of(env) == []


async def test_unanswered_question_reminds_then_breaches_to_the_supervisor(inq_env: Env) -> None:
    env = inq_env
    start = last_seq(env)
    outcome, number = await ask(env, "@王警官\u2005楼道里的灯坏了一个星期了，能帮忙催一下物业吗", mentions=(WANG,))
    assert outcome == f"inquiry_acknowledged:{number}"
    ack = await env.bot_says(JINXIU, start, "已收到您的问题")
    assert f"#{number}" in ack["text"] and "24小时内答复" in ack["text"]
    await env.bot_says(WANG, start, "居民咨询")
    move_clock(env, timedelta(hours=4))
    reminder = await env.bot_says(WANG, start, "已4小时未答复")
    assert f"答 {number}" in reminder["text"]
    move_clock(env, timedelta(hours=16))
    await env.bot_says(WANG, start, "已20小时未答复")
    assert env.bot_messages(ZHAO, start) == []  # the supervisor hears nothing before the deadline
    move_clock(env, timedelta(hours=4))
    breach = await env.bot_says(ZHAO, start, "咨询超时")
    for expected in (f"#{number}", "锦绣小区平安群", "张阿姨", "负责民警：王警官", "楼道里的灯坏了"):
        assert expected in breach["text"]
    await env.bot_says(WANG, start, "已报告所领导")
    [ticket] = await tickets_of(env)
    assert ticket.breached and ticket.status == "open"
    assert env.app.station is not None
    move_clock(env, timedelta(hours=6))
    assert (await run_due_tickets(env.app.station)).breaches == 0  # once, whoever runs the timers
    assert (await event_kinds(env, number)).count("breached") == 1
    assert len([m for m in env.bot_messages(ZHAO, start) if "咨询超时" in m["text"]]) == 1


async def test_an_officers_reply_in_the_group_is_the_response(inq_env: Env) -> None:
    env = inq_env
    start = last_seq(env)
    outcome, number = await ask(env, "@王警官\u2005小区燃气管道什么时候检修？", mentions=(WANG,))
    assert outcome == f"inquiry_acknowledged:{number}"
    await env.bot_says(WANG, start, "居民咨询")
    move_clock(env, timedelta(hours=2))
    # words of a report, but an answer to a resident: it answers the ticket and opens no incident
    reply_id = await env.sandbox.say(WANG, "@张阿姨\u2005燃气公司说下周二检修，闻到燃气味就打他们电话",
                                     room=JINXIU, mentions=("wxid_res_01",))
    assert await env.outcome_of(reply_id) == f"inquiry_responded:{number}"
    [ticket] = await tickets_of(env)
    assert (ticket.status, ticket.responded_by, ticket.responded_via) == ("responded", "wang", "group")
    assert ticket.responded_at == ticket.created_at + timedelta(hours=2)
    assert await env.incidents() == []
    move_clock(env, timedelta(hours=30))
    assert env.app.station is not None
    tick = await run_due_tickets(env.app.station)
    assert (tick.reminders, tick.breaches) == (0, 0)
    assert not (await tickets_of(env))[0].breached
    assert [m for m in env.bot_messages(WANG, start) if "未答复" in m["text"]] == []
    assert env.bot_messages(ZHAO, start) == []


async def test_private_answer_and_close_through_the_bot(inq_env: Env) -> None:
    env = inq_env
    start = last_seq(env)
    outcome, number = await ask(env, "请问无犯罪记录证明在哪里开？出国要用", sender="wxid_res_06", room=FANGDIAN)
    assert outcome == f"inquiry_answered:{number}:no_criminal_record"
    await env.bot_says(GENERAL, start, f"居民咨询 #{number}")
    await env.sandbox.say(GENERAL, f"收到 {number}")  # the incident habit: told how to answer instead
    await env.bot_says(GENERAL, start, "不需要“收到”")
    move_clock(env, timedelta(hours=1))
    before_answer = last_seq(env)
    await env.sandbox.say(GENERAL, f"答 {number} 出国用的请带身份证到户籍窗口申请，开好后再去公证处公证")
    answer = await env.bot_says(FANGDIAN, before_answer, f"答复（咨询 #{number}）")
    assert answer["text"].startswith("@赵老师") and answer["mentions"] == ["wxid_res_06"]
    assert f"{GENERAL_NAME}答复（咨询 #{number}）：出国用的请带身份证到户籍窗口申请" in answer["text"]
    await env.bot_says(GENERAL, before_answer, "已把您的答复发到芳甸路居民群")
    await env.sandbox.say(GENERAL, "我的")
    mine = await env.bot_says(GENERAL, start, "您未办结的居民咨询")
    assert f"#{number}" in mine["text"] and "已答复" in mine["text"]
    move_clock(env, timedelta(days=2))
    before_close = last_seq(env)
    await env.sandbox.say(GENERAL, f"结 {number} 证明已开具，居民已领取")
    result = await env.bot_says(FANGDIAN, before_close, "已办结")
    assert "证明已开具，居民已领取" in result["text"] and result["mentions"] == ["wxid_res_06"]
    await env.bot_says(GENERAL, start, f"已办结咨询 #{number}")
    [ticket] = await tickets_of(env)
    assert (ticket.status, ticket.responded_via, ticket.result) == ("closed", "private", "证明已开具，居民已领取")
    assert ticket.closed_at == ticket.created_at + timedelta(hours=1, days=2)
    assert await event_kinds(env, number) == ["opened", "assigned", "kb_answered", "pinged", "responded",
                                              "answered", "closed"]
    assert await env.incidents() == []  # "结 N" went to the inquiry, not to an incident


async def test_off_shift_question_is_answered_at_once(inq_env: Env) -> None:
    env = inq_env
    env.clock.set_local("2026-11-28 23:00")  # Saturday night
    start = last_seq(env)
    outcome, number = await ask(env, f"{BOT_MENTION}小区东门的道闸坏了，晚上进不来", mentions=(BOT,))
    assert outcome == f"inquiry_acknowledged:{number}"
    reply = await env.bot_says(JINXIU, start, "已收到您的问题")
    assert "非工作时间" in reply["text"]


async def test_dashboard_lists_inquiries_running_out_of_time(inq_env: Env) -> None:
    """The admin web's dashboard shows unanswered questions within 4 hours of (or past) their 24-hour promise."""
    import re

    import aiohttp

    env = inq_env
    assert env.app.web is not None
    start = env.sandbox.log.last_seq
    asked = await env.sandbox.say("wxid_res_01", "请问派出所开无犯罪记录证明要带什么？", room=JINXIU)
    assert (await env.outcome_of(asked)).startswith("inquiry")
    await env.bot_says(JINXIU, start, "")
    env.clock.current += timedelta(hours=21)
    async with aiohttp.ClientSession(env.app.web.url, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get("/login") as form:
            token = re.search(r'name="csrf_token" value="([^"]+)"', await form.text())
        assert token is not None
        async with http.post("/login", data={"csrf_token": token.group(1), "username": "admin",
                                             "password": "gonghao-demo-2026", "next": "/"}) as page:
            text = await page.text()
        assert "即将或已经超过24小时的咨询" in text and "无犯罪记录证明" in text
        number = re.search(r'href="/inquiries/(\d+)"', text)
        assert number is not None
        async with http.get("/inquiries") as listing:
            assert f'data-inquiry="{number.group(1)}"' in await listing.text()
        async with http.get(f"/inquiries/{number.group(1)}") as page:
            detail = await page.text()
        assert page.status == 200 and "时间线" in detail and "居民提问" in detail and "张阿姨" in detail
        async with http.get("/inquiries/999999") as missing:
            assert missing.status == 404
    async with aiohttp.ClientSession(env.app.web.url) as anonymous, anonymous.get(
            f"/inquiries/{number.group(1)}", allow_redirects=False) as page:
        assert page.status in (302, 303)  # no page without a session
