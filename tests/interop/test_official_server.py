"""Interop: PyPI python-wechaty 0.10.7 against the OFFICIAL Node puppet-service server.

Each test gets a fresh ``official_server.mjs`` (wechaty-puppet-service wrapping
wechaty-puppet-mock, see ``official_server.py``) and connects a real python-wechaty
client to it over gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.wechaty_compat import load_wechaty

from .official_server import OfficialPuppetServer, official_puppet_server

BOT_ID = "wxid_gonghao_bot"
ROOM_ID = "jinxiu@chatroom"
ROOM_TOPIC = "锦绣小区平安群"
RESIDENT = "wxid_resident_zhang"
NEIGHBOUR = "wxid_resident_li"
OUTSIDER = "wxid_outsider_wang"

WORLD: dict[str, Any] = {
    "bot": {"id": BOT_ID, "name": "花木派出所公号"},
    "contacts": [
        {"id": RESIDENT, "name": "张阿姨"},
        {"id": NEIGHBOUR, "name": "李师傅"},
        {"id": OUTSIDER, "name": "王先生"},
    ],
    "rooms": [{"id": ROOM_ID, "topic": ROOM_TOPIC, "members": [RESIDENT, NEIGHBOUR]}],
}

TIMEOUT = 15.0


@dataclass
class Received:
    """What the bot's on_message saw, extracted inside the handler."""

    message: Any
    talker_id: str
    talker_name: str
    room_id: str | None
    room_topic: str | None
    text: str
    is_self: bool
    date: datetime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reset_wechaty_pools(wechaty: Any) -> None:
    """python-wechaty caches Contact/Room/Tag objects in class-level pools shared by
    every Wechaty instance in the process; a cached object stays bound to the puppet
    of the bot that loaded it. Clear them so each test's bot starts clean."""
    from wechaty.user.contact import Contact
    from wechaty.user.room import Room
    from wechaty.user.tag import Tag

    for cls in (Contact, Room, Tag):
        cls._pool.clear()


class BotHarness:
    """A python-wechaty client connected to ``srv``, recording events."""

    def __init__(self, srv: OfficialPuppetServer, cache_dir: Path) -> None:
        wechaty = load_wechaty(cache_dir)
        from wechaty_puppet import PuppetOptions

        _reset_wechaty_pools(wechaty)
        harness = self
        self.logged_in = asyncio.Event()
        self.ready = asyncio.Event()
        self.login_contact: Any = None
        self.received: list[Received] = []
        self.handler_errors: list[BaseException] = []
        self._changed = asyncio.Event()

        class RecordingBot(wechaty.Wechaty):  # type: ignore[misc,name-defined]
            async def on_login(self, contact: Any) -> None:
                harness.login_contact = contact
                harness.logged_in.set()

            async def on_ready(self, payload: Any) -> None:
                harness.ready.set()

            async def on_message(self, msg: Any) -> None:
                try:
                    room = msg.room()
                    talker = msg.talker()
                    harness.received.append(
                        Received(
                            message=msg,
                            talker_id=talker.contact_id,
                            talker_name=talker.name,
                            room_id=room.room_id if room is not None else None,
                            room_topic=await room.topic() if room is not None else None,
                            text=msg.text(),
                            is_self=msg.is_self(),
                            date=msg.date(),
                        )
                    )
                except BaseException as exc:  # surfaced by wait_message, not swallowed by pyee
                    harness.handler_errors.append(exc)
                    raise
                finally:
                    harness._changed.set()

        options = wechaty.WechatyOptions(
            puppet_options=PuppetOptions(token=srv.token, end_point=srv.endpoint),
            # Wechaty's login handler refuses to continue if something already listens
            # on the plugin web-server port (default 5000); use a surely free one.
            port=_free_port(),
        )
        self.bot = RecordingBot(options)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.bot.start(), name="wechaty-bot")
        await self._wait_event(self.logged_in, "login")

    async def _wait_event(self, event: asyncio.Event, what: str) -> None:
        try:
            await asyncio.wait_for(event.wait(), TIMEOUT)
        except TimeoutError:
            state = "finished" if self.task is not None and self.task.done() else "running"
            raise AssertionError(f"no {what} event within {TIMEOUT}s (bot.start() task {state})") from None

    async def wait_message(self, predicate: Callable[[Received], bool], timeout: float = TIMEOUT) -> Received:
        deadline = time.monotonic() + timeout
        while True:
            if self.handler_errors:
                raise AssertionError("on_message raised") from self.handler_errors[0]
            for item in self.received:
                if predicate(item):
                    return item
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = "\n".join(
                    f"  {r.talker_id} in {r.room_id or 'private'}: {r.text!r} (self={r.is_self})"
                    for r in self.received
                )
                raise AssertionError(
                    f"no matching message within {timeout}s; received:\n{seen or '  (none)'}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def stop(self) -> None:
        # Cancel the event-stream task first: otherwise Wechaty.start() treats the
        # stream closed by stop() as a network error and sleeps 60 s to restart.
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.bot.stop(), 10)


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[OfficialPuppetServer]:
    async with official_puppet_server(WORLD, tmp_path / "official") as server:
        yield server


@pytest.fixture(scope="session")
def wechaty_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # python-wechaty reads its cache dir once, at first import (see bot/wechaty_compat.py).
    return tmp_path_factory.mktemp("wechaty-cache")


@pytest.fixture
async def bot(srv: OfficialPuppetServer, wechaty_cache_dir: Path) -> AsyncIterator[BotHarness]:
    harness = BotHarness(srv, wechaty_cache_dir)
    try:
        await harness.start()
        yield harness
    finally:
        await harness.stop()


async def test_control_api_health_and_validation(srv: OfficialPuppetServer) -> None:
    health = await srv.health()
    assert health["ok"] and health["logged_in"] and health["ready"]
    assert health["bot_id"] == BOT_ID
    assert srv.token.startswith("insecure_")
    assert await srv.messages(ROOM_ID) == []
    with pytest.raises(Exception, match="HTTP 400"):
        await srv.say("wxid_nobody", "hi", room=ROOM_ID)
    with pytest.raises(Exception, match="not a member"):
        await srv.say(OUTSIDER, "hi", room=ROOM_ID)


async def test_login_and_ready(srv: OfficialPuppetServer, bot: BotHarness) -> None:
    assert bot.login_contact.contact_id == BOT_ID
    assert bot.login_contact.name == "花木派出所公号"
    await bot._wait_event(bot.ready, "ready")
    assert bot.bot.user_self().contact_id == BOT_ID


async def test_room_message_reaches_bot_and_room_say_lands(
    srv: OfficialPuppetServer, bot: BotHarness
) -> None:
    before = datetime.now() - timedelta(seconds=5)
    message_id = await srv.say(RESIDENT, "楼下有人撬电动车", room=ROOM_ID, mentions=[BOT_ID])

    got = await bot.wait_message(lambda r: r.text == "楼下有人撬电动车")
    assert got.message.message_id == message_id
    assert got.talker_id == RESIDENT
    assert got.talker_name == "张阿姨"
    assert got.room_id == ROOM_ID
    assert got.room_topic == ROOM_TOPIC
    assert not got.is_self
    assert before <= got.date <= datetime.now() + timedelta(seconds=5)  # epoch ms understood
    assert [c.contact_id for c in await got.message.mention_list()] == [BOT_ID]

    room = got.message.room()
    sent = await room.say("收到，民警马上到")
    assert sent is not None, "MessageSendText returned no id"
    assert sent.text() == "收到，民警马上到"
    assert sent.talker().contact_id == BOT_ID

    landed = await srv.wait_for(ROOM_ID, lambda m: m["direction"] == "bot", timeout=TIMEOUT)
    assert landed["text"] == "收到，民警马上到"
    assert landed["from"] == BOT_ID
    assert landed["id"] == sent.message_id
    assert [m["text"] for m in await srv.messages(ROOM_ID)] == ["楼下有人撬电动车", "收到，民警马上到"]

    # Like the mock (and real puppets), the server echoes the bot's own message back.
    echo = await bot.wait_message(lambda r: r.message.message_id == sent.message_id)
    assert echo.is_self and echo.room_id == ROOM_ID


async def test_private_message_reaches_bot_and_contact_say_lands(
    srv: OfficialPuppetServer, bot: BotHarness
) -> None:
    await srv.say(OUTSIDER, "请问户口迁移要带什么材料？")

    got = await bot.wait_message(lambda r: r.text == "请问户口迁移要带什么材料？")
    assert got.talker_id == OUTSIDER
    assert got.talker_name == "王先生"
    assert got.room_id is None
    assert got.message.to().contact_id == BOT_ID

    talker = got.message.talker()
    sent = await talker.say("请带身份证和户口本")
    assert sent is not None

    landed = await srv.wait_for(OUTSIDER, lambda m: m["direction"] == "bot", timeout=TIMEOUT)
    assert landed["text"] == "请带身份证和户口本"
    assert landed["from"] == BOT_ID
    assert landed["to"] == OUTSIDER
    assert landed["room"] is None
    assert await srv.messages(ROOM_ID) == []


async def test_wait_for_times_out_listing_what_was_seen(srv: OfficialPuppetServer, bot: BotHarness) -> None:
    await srv.say(NEIGHBOUR, "今晚巡逻几点？", room=ROOM_ID)
    with pytest.raises(TimeoutError, match="今晚巡逻几点"):
        await srv.wait_for(ROOM_ID, lambda m: m["direction"] == "bot", timeout=0.3)
