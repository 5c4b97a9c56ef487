"""End to end: the sandbox's puppet service and the bot in one process, over real gRPC and python-wechaty.

Residents speak through the sandbox's API; we wait on the messages the bot sends back, never on sleeps.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from bot import app as app_module
from bot.app import App, PuppetTarget
from bot.config.loader import ConfigError
from bot.connection import ConnectionFailed
from bot.sandbox import Sandbox, load_world
from bot.wechaty_compat import cached_contact
from handlers.inbound import Inbound
from models.tables import InboundMessage
from tests.conftest import CHEN, FANGDIAN, JINXIU, WANG, Env, FakeClock, write_config


def last_seq(env: Env) -> int:
    return env.sandbox.log.last_seq


@pytest.mark.parametrize(
    ("text", "reply_pattern", "category"),
    [
        ("楼道闻到一股烟焦味!", "119", "fire"),
        ("一个三四岁的小男孩光着脚在外到处找妈妈", "孩子", "lost_child"),
        ("收到一条短信说法人信息到期", "96110", "scam"),
        ("有人拿裸聊视频威胁我转钱", "不要转钱", "scam"),
    ],
)
async def test_report_gets_group_reply_and_officer_ping(env: Env, text: str, reply_pattern: str, category: str) -> None:
    start = last_seq(env)
    await env.sandbox.say("wxid_res_01", text, room=JINXIU)
    reply = await env.bot_says(JINXIU, start, reply_pattern)
    assert reply["text"].startswith("@张阿姨")  # the reporter is addressed
    assert reply["mentions"] == ["wxid_res_01"]
    ping = await env.bot_says(WANG, start, "警情")
    [incident] = await env.incidents()
    assert incident.category == category
    for expected in (f"#{incident.id}", "锦绣小区平安群", "张阿姨", text, f"收到 {incident.id}"):
        assert expected in ping["text"]
    assert ping["room"] is None and ping["conversation"] == WANG


async def test_ordinary_chat_gets_no_reply(env: Env) -> None:
    start = last_seq(env)
    for number, text in enumerate(["今晚吃火锅吗", "孩子放学了", "明天停水，大家存点水"]):
        message_id = await env.sandbox.say(f"wxid_res_0{number + 2}", text, room=JINXIU)
        assert await env.outcome_of(message_id) == "quiet"
    # A report afterwards: the outbox sends in order, so its reply being the first bot message in the
    # room proves nothing was sent for the chat before it.
    await env.sandbox.say("wxid_res_01", "楼道着火了", room=JINXIU)
    await env.bot_says(JINXIU, start, "119")
    assert len(env.bot_messages(JINXIU, start)) == 1
    assert len(await env.incidents()) == 1


async def test_a_report_ends_the_intake_holding_chit_chat_for_company(env: Env,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Under steady traffic the intake holds chit-chat back to batch it; a report arriving meanwhile is
    handled at once (with the chat), not after the wait, and before the chat it was batched with. The wait is
    set to an hour: the test can only pass in time if the report cuts it short."""
    monkeypatch.setattr(app_module, "LINGER_SECONDS", 3600)
    monkeypatch.setattr(app_module, "LINGER_BELOW_GAP", 3600)  # every arrival counts as steady traffic
    start = last_seq(env)
    chat = await env.sandbox.say("wxid_res_02", "今晚吃火锅吗", room=JINXIU)
    await asyncio.wait_for(env.app.lingering.wait(), 10)
    report = await env.sandbox.say("wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)
    assert await env.outcome_of(chat) == "quiet"
    assert await env.outcome_of(report) == "incident:fire"
    await env.bot_says(JINXIU, start, "119")
    async with env.app.station.db.session() as session:  # type: ignore[union-attr]
        stored = (await session.scalars(select(InboundMessage.message_id).order_by(InboundMessage.id))).all()
    assert stored[-2:] == [report, chat]  # the report's transaction came first


async def test_chit_chat_costs_no_contact_lookup_and_a_report_names_its_sender(env: Env) -> None:
    """The sender's ContactPayload is a second round trip per new talker: chit-chat never needs the name, a
    report does (the officer's ping names the reporter)."""
    start = last_seq(env)
    asked = env.sandbox.puppet.contact_payloads_asked
    chat = await env.sandbox.say("wxid_res_02", "今晚吃火锅吗", room=JINXIU)
    assert await env.outcome_of(chat) == "quiet"
    assert asked["wxid_res_02"] == 0
    assert env.app.connection is not None  # nor is a python-wechaty Contact kept for the talker
    assert cached_contact(env.app.connection._bot, "wxid_res_02") is None
    await env.sandbox.say("wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)
    ping = await env.bot_says(WANG, start, "烟焦味")
    assert "张阿姨" in ping["text"]
    assert asked["wxid_res_01"] >= 1
    # a contact the service does not know keeps its id for a name instead of losing the message
    assert await env.app.connection.contact_name("wxid_ghost") == "wxid_ghost"


async def test_officer_acknowledges_with_one_word(env: Env) -> None:
    start = last_seq(env)
    await env.sandbox.say("wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)
    await env.bot_says(WANG, start, "警情")
    await env.sandbox.say(WANG, "收到")
    told = await env.bot_says(JINXIU, start, "王警官已接警")
    confirm = await env.bot_says(WANG, start, "已确认接警")
    [incident] = await env.incidents()
    assert f"#{incident.id}" in told["text"] and f"#{incident.id}" in confirm["text"]
    assert incident.status == "acknowledged"
    assert incident.acknowledged_by == "wang"
    assert incident.acknowledged_at == env.clock()


async def test_acknowledge_by_number(env: Env) -> None:
    start = last_seq(env)
    await env.sandbox.say("wxid_res_01", "楼道着火了", room=JINXIU)
    await env.sandbox.say("wxid_res_02", "有人拿裸聊视频威胁我转钱", room=JINXIU)
    await env.bot_says(WANG, start, "裸聊")
    first, _second = await env.incidents()
    await env.sandbox.say(WANG, f"收到 {first.id}")
    await env.bot_says(WANG, start, f"已确认接警 #{first.id}")
    statuses = [i.status for i in await env.incidents()]
    assert statuses == ["acknowledged", "open"]


async def test_resident_cannot_acknowledge(env: Env) -> None:
    start = last_seq(env)
    await env.sandbox.say("wxid_res_01", "楼道着火了", room=JINXIU)
    await env.bot_says(WANG, start, "警情")
    refused_id = await env.sandbox.say("wxid_res_02", "收到")  # privately to the bot
    assert await env.outcome_of(refused_id) == "refused_not_officer"
    await env.bot_says("wxid_res_02", start, "仅用于接收民警指令")
    in_group = await env.sandbox.say("wxid_res_02", "收到", room=JINXIU)
    assert await env.outcome_of(in_group) == "quiet"
    [incident] = await env.incidents()
    assert incident.status == "open"
    assert not [m for m in env.bot_messages(JINXIU, start) if "已接警" in m["text"]]


async def test_same_message_delivered_twice_makes_one_incident(env: Env) -> None:
    start = last_seq(env)
    message_id = await env.sandbox.say("wxid_res_01", "楼道着火了", room=JINXIU)
    await env.sandbox.say("wxid_res_01", "楼道着火了", room=JINXIU, message_id=message_id)
    await env.bot_says(WANG, start, "警情")
    # a later message, handled after both deliveries arrived
    later = await env.sandbox.say("wxid_res_03", "大家好", room=JINXIU)
    assert await env.outcome_of(later) == "quiet"
    assert len(await env.incidents()) == 1
    assert len([m for m in env.bot_messages(WANG, start)]) == 1


async def test_off_shift_report_pings_the_duty_officer(env: Env) -> None:
    env.clock.set_local("2026-11-28 23:00")  # Saturday night: 陈警官 is off shift
    start = last_seq(env)
    await env.sandbox.say("wxid_res_08", "楼道闻到一股烟焦味!", room=FANGDIAN)
    await env.bot_says("wxid_officer_li", start, "芳甸路居民群")
    assert env.bot_messages(CHEN, start) == []


async def test_bot_ignores_its_own_messages(env: Env) -> None:
    start = last_seq(env)
    await env.sandbox.say("wxid_res_01", "楼道着火了", room=JINXIU)
    reply = await env.bot_says(JINXIU, start, "119")
    # The reply text itself contains report words (119, 着火…); its echo must not open an incident.
    echo = reply["id"]
    assert await env.outcome_of(echo) == "self"
    assert len(await env.incidents()) == 1


async def test_hot_reload_swaps_rules_and_keeps_running_on_errors(env: Env) -> None:
    original = env.config_path.read_text(encoding="utf-8")
    broken = original.replace("role: community", "role: chief", 1)
    env.config_path.write_text(broken, encoding="utf-8")
    issues = env.app.reload()
    assert issues and "officers[0].role" in str(issues[0]) and str(env.config_path) in str(issues[0])
    start = last_seq(env)
    await env.sandbox.say("wxid_res_01", "楼道着火了", room=JINXIU)
    await env.bot_says(JINXIU, start, "119")  # still running on the old version

    assert env.app.station is not None
    old_version = env.app.station.current.version
    data = yaml.safe_load(original)
    data["routes"].insert(0, {"id": "noise", "category": "noise", "match": {"any": ["装修噪音"]},
                              "reply": "已记录噪音投诉"})
    env.config_path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    assert env.app.reload() == []
    assert env.app.station.current.version != old_version
    start = last_seq(env)
    await env.sandbox.say("wxid_res_02", "楼上装修噪音太大了", room=JINXIU)
    await env.bot_says(JINXIU, start, "已记录噪音投诉")


async def test_file_change_is_picked_up_by_the_watcher(env: Env) -> None:
    watcher = asyncio.create_task(env.app.watch_config())
    try:
        await asyncio.wait_for(env.app.watching.wait(), 20)
        env.app.reloaded.clear()
        text = env.config_path.read_text(encoding="utf-8")
        env.config_path.write_text(text.replace("name: 花木派出所", "name: 花木派出所（测试）"), encoding="utf-8")
        await asyncio.wait_for(env.app.reloaded.wait(), 20)
        assert env.app.station is not None
        assert env.app.station.current.config.station.name == "花木派出所（测试）"
    finally:
        watcher.cancel()


async def test_wrong_token_is_refused_clearly(tmp_path: Path, clock: FakeClock, default_config_text: str) -> None:
    async with Sandbox(load_world(None), token="the-right-token-123") as sandbox:
        app = App(write_config(tmp_path, default_config_text),
                  puppet=PuppetTarget("a-wrong-token-456", sandbox.endpoint), clock=clock, watch=False)
        try:
            await app.start()
            with pytest.raises(ConnectionFailed, match="refused the token"):
                await app.wait_logged_in()
        finally:
            await app.stop()


async def test_invalid_config_is_refused_at_start(tmp_path: Path, default_config_text: str) -> None:
    path = write_config(tmp_path, default_config_text.replace("officer: chen", "officer: nobody"))
    app = App(path, puppet=PuppetTarget("unused-token", "127.0.0.1:1"), watch=False)
    with pytest.raises(ConfigError, match=r"groups\[2\]\.officer: unknown officer 'nobody'"):
        await app.start()


def test_inbound_is_plain_data() -> None:
    fields = set(Inbound.__dataclass_fields__)
    assert {"message_id", "sender_id", "room_id", "text", "mentions_bot", "sent_at", "is_self"} <= fields


async def test_messages_from_a_new_room_arriving_together_fetch_its_payload_once(env: Env) -> None:
    """Several loaders meeting a room the bot has not seen share one RoomPayload call (the service answers
    it slowly here, so that they all meet it while it is in flight)."""
    env.sandbox.puppet.answer_delay["RoomPayload"] = 0.5
    assert env.sandbox.puppet.room_payloads_asked[FANGDIAN] == 0
    said = [await env.sandbox.say("wxid_res_06", f"今天天气不错{k}", room=FANGDIAN) for k in range(5)]
    assert [await env.outcome_of(message_id) for message_id in said] == ["quiet"] * 5
    assert env.sandbox.puppet.room_payloads_asked[FANGDIAN] == 1
