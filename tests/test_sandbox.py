"""The built-in sandbox: world loading, the puppet gRPC service (driven by a real
python-wechaty client) and the web chat's JSON API."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from wechaty_grpc.wechaty import PuppetStub
from wechaty_grpc.wechaty.puppet import EventType

from bot.sandbox import Sandbox, SandboxError, World, WorldError, load_world, parse_world
from bot.wechaty_compat import isolate_bot, load_wechaty

wechaty = load_wechaty(Path(tempfile.gettempdir()) / "gonghao-test-wechaty")

from wechaty import Contact, Message, Room, Wechaty, WechatyOptions  # noqa: E402
from wechaty_puppet import MessageType, PuppetOptions  # noqa: E402

TOKEN = "sandbox-test-token"
BOT = "wxid_gonghao_bot"
JINXIU = "jinxiu@chatroom"
LIANYANG = "lianyang@chatroom"
FANGDIAN = "fangdian@chatroom"
WANG = "wxid_officer_wang"
RES1 = "wxid_res_01"


# -- fixtures ---------------------------------------------------------------------------
class RecordingBot(Wechaty):  # type: ignore[misc]
    """A python-wechaty bot that records what it receives, for tests to await."""

    def __init__(self, options: WechatyOptions) -> None:
        super().__init__(options)
        self.logged_in = asyncio.Event()
        self.became_ready = asyncio.Event()
        self.login_contact: Contact | None = None
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.room_events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def on_login(self, contact: Contact) -> None:
        self.login_contact = contact
        self.logged_in.set()

    async def on_ready(self, payload: Any) -> None:
        self.became_ready.set()

    async def on_message(self, msg: Message) -> None:
        await self.inbox.put(msg)

    async def on_room_join(
        self, room: Room, invitees: list[Contact], inviter: Contact, date: datetime
    ) -> None:
        await self.room_events.put(("join", room, [c.contact_id for c in invitees], inviter.contact_id))

    async def on_room_leave(
        self, room: Room, leavers: list[Contact], remover: Contact, date: datetime
    ) -> None:
        await self.room_events.put(("leave", room, [c.contact_id for c in leavers], remover.contact_id))

    async def on_room_topic(
        self, room: Room, new_topic: str, old_topic: str, changer: Contact, date: datetime
    ) -> None:
        await self.room_events.put(("topic", room, new_topic, old_topic, changer.contact_id))

    async def next_message(self, predicate: Callable[[Message], bool], timeout: float = 10) -> Message:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.inbox.get()
                if predicate(msg):
                    return msg


async def run_bot(b: RecordingBot) -> None:
    """Run a python-wechaty bot the way bot/connection.py does: like ``Wechaty.start()``, but
    with per-bot caches and without the plugin server (which refuses to log in when anything
    listens on 127.0.0.1:5000), and with errors raised instead of printed. Returns when the
    event stream ends."""
    await b.init_puppet()
    isolate_bot(b)
    await b.init_puppet_event_bridge(b.puppet)
    await b.puppet.start()


async def _until(event: asyncio.Event, task: asyncio.Task[None], what: str, timeout: float = 10) -> None:
    waiter = asyncio.ensure_future(event.wait())
    done, _ = await asyncio.wait({waiter, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        raise AssertionError(f"python-wechaty never reported {what} (bot task finished: {task.done()})")


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    sb = Sandbox(load_world(), token=TOKEN)
    await sb.start()
    try:
        yield sb
    finally:
        await sb.stop()


@pytest.fixture
async def bot(sandbox: Sandbox) -> AsyncIterator[RecordingBot]:
    b = RecordingBot(WechatyOptions(puppet_options=PuppetOptions(token=TOKEN, end_point=sandbox.endpoint)))
    b.task = asyncio.create_task(run_bot(b))
    try:
        await _until(b.logged_in, b.task, "login")
        await _until(b.became_ready, b.task, "ready")
        yield b
    finally:
        if not b.task.done():
            await b.stop()  # Stop ends the event stream, so start() returns cleanly
            await asyncio.wait_for(b.task, 5)


@contextlib.asynccontextmanager
async def raw_stub(sandbox: Sandbox, token: str = TOKEN) -> AsyncIterator[PuppetStub]:
    host, port = sandbox.endpoint.rsplit(":", 1)
    channel = Channel(host=host, port=int(port))
    channel._authority = token  # what python-wechaty does with its token
    try:
        yield PuppetStub(channel)
    finally:
        channel.close()


@pytest.fixture
async def http(sandbox: Sandbox) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=sandbox.web_url) as session:
        yield session


# -- the world --------------------------------------------------------------------------
def test_default_world_matches_the_project_config() -> None:
    world = load_world()
    assert (world.bot.id, world.bot.name) == (BOT, "花木派出所公号")
    from bot.config.loader import load_config

    config = load_config(Path(__file__).resolve().parent.parent / "config.yaml")
    officers = {c.id: c.name for c in world.officers}
    assert officers == {o.wechat_id: o.name for o in config.officers}
    assert {g.room_id: g.topic for g in config.groups} == {r.id: r.topic for r in world.rooms}
    assert [c.id for c in world.residents] == [f"wxid_res_{i:02d}" for i in range(1, 11)]
    assert len({c.name for c in world.residents}) == 10
    rooms = {r.id: r for r in world.rooms}
    assert {k: (r.topic, r.owner) for k, r in rooms.items()} == {
        JINXIU: ("锦绣小区平安群", WANG),
        LIANYANG: ("联洋社区警民群", WANG),
        FANGDIAN: ("芳甸路居民群", "wxid_officer_chen"),
    }
    for room in world.rooms:
        assert {BOT, room.owner, "wxid_officer_li", "wxid_officer_zhao"} <= set(room.members)
        residents = [m for m in room.members if m.startswith("wxid_res_")]
        assert 5 <= len(residents) <= 7, room.id
    assert "wxid_officer_chen" not in rooms[JINXIU].members


BASE: dict[str, Any] = {
    "bot": {"id": "b", "name": "公号"},
    "contacts": [{"id": "a", "name": "甲"}, {"id": "wxid_officer_x", "name": "警官"}],
    "rooms": [{"id": "r@chatroom", "topic": "群", "owner": "a", "members": ["a"]}],
}


def _variant(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    import copy

    data = copy.deepcopy(BASE)
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def test_parse_world_defaults() -> None:
    world = parse_world(BASE)
    assert world.rooms[0].members == ["a", "b"]  # the bot is always a member
    assert world.contact("wxid_officer_x").role == "officer"  # inferred from the id
    assert world.contact("a").role == "resident"
    assert isinstance(world, World)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("rooms", 0, "id"), "no-at-sign", "must contain '@'"),
        (("rooms", 0, "members"), ["a", "ghost"], "'ghost' is not a known contact"),
        (("rooms", 0, "owner"), "wxid_officer_x", "must be listed in members"),
        (("contacts", 1, "id"), "a", "duplicate contact id 'a'"),
        (("contacts", 0, "role"), "mayor", "role must be 'officer' or 'resident'"),
        (("contacts", 0, "nmae"), "typo", "unknown key(s) ['nmae']"),
        (("contacts",), [], "non-empty list"),
        (("bot",), {"id": "b"}, "missing required key(s) ['name']"),
    ],
)
def test_bad_world_is_rejected_clearly(path: tuple[Any, ...], value: Any, message: str) -> None:
    with pytest.raises(WorldError) as err:
        parse_world(_variant(path, value))
    assert message in str(err.value)


def test_load_world_reports_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "w.yaml"
    bad.write_text("bot: [unclosed\n", encoding="utf-8")
    with pytest.raises(WorldError, match="invalid YAML"):
        load_world(bad)
    with pytest.raises(WorldError, match="cannot read"):
        load_world(tmp_path / "missing.yaml")


# -- the gRPC puppet service with python-wechaty --------------------------------------------
async def test_login_and_ready_arrive(sandbox: Sandbox, bot: RecordingBot) -> None:
    assert bot.login_contact is not None
    assert bot.login_contact.contact_id == BOT
    assert bot.login_contact.name == "花木派出所公号"
    assert bot.user_self().contact_id == BOT
    assert sandbox.connected


async def test_rooms_resolve_through_python_wechaty(bot: RecordingBot) -> None:
    rooms = await bot.Room.find_all()
    assert {r.room_id for r in rooms} == {JINXIU, LIANYANG, FANGDIAN}
    room = await bot.Room.find("锦绣")
    assert room is not None and room.room_id == JINXIU
    assert await room.topic() == "锦绣小区平安群"
    members = await room.member_list()
    world = load_world()
    assert {m.contact_id for m in members} == set(world.room(JINXIU).members)
    names = {m.contact_id: m.name for m in members}
    assert names[RES1] == "张阿姨" and names[WANG] == "王警官"
    owner = await room.owner()
    assert owner is not None and owner.contact_id == WANG
    assert await room.has(bot.Contact.load(RES1))
    assert not await room.has(bot.Contact.load("wxid_officer_chen"))


async def test_resident_room_message_reaches_on_message(sandbox: Sandbox, bot: RecordingBot) -> None:
    message_id = await sandbox.say(RES1, "@花木派出所公号\u2005楼下有人撬车", room=JINXIU, mentions=[BOT])
    msg = await bot.next_message(lambda m: m.message_id == message_id)
    assert msg.talker().contact_id == RES1
    assert msg.talker().name == "张阿姨"
    room = msg.room()
    assert room is not None and room.room_id == JINXIU
    assert msg.text() == "@花木派出所公号\u2005楼下有人撬车"
    assert msg.type() == MessageType.MESSAGE_TYPE_TEXT
    assert msg.payload.mention_ids == [BOT]
    assert await msg.mention_self()
    assert [c.contact_id for c in await msg.mention_list()] == [BOT]
    assert await msg.mention_text() == "楼下有人撬车"
    assert not msg.is_self()
    assert abs(msg.date().timestamp() - time.time()) < 60  # epoch milliseconds understood


async def test_unmentioned_room_message_has_no_mentions(sandbox: Sandbox, bot: RecordingBot) -> None:
    message_id = await sandbox.say("wxid_res_07", "今天快递放门卫了", room=LIANYANG)
    msg = await bot.next_message(lambda m: m.message_id == message_id)
    assert msg.payload.mention_ids == []
    assert not await msg.mention_self()
    assert msg.room() is not None and msg.room().room_id == LIANYANG


async def test_private_message_to_the_bot(sandbox: Sandbox, bot: RecordingBot) -> None:
    message_id = await sandbox.say(WANG, "今晚巡逻名单发一下")
    msg = await bot.next_message(lambda m: m.message_id == message_id)
    assert msg.room() is None
    assert msg.talker().contact_id == WANG
    to = msg.to()
    assert to is not None and to.contact_id == BOT
    assert msg.text() == "今晚巡逻名单发一下"
    assert [m["id"] for m in sandbox.messages(WANG)] == [message_id]


async def test_bot_room_say_is_logged_and_echoed_as_self(sandbox: Sandbox, bot: RecordingBot) -> None:
    after = sandbox.log.last_seq
    room = bot.Room.load(JINXIU)
    await room.ready()
    sent = await room.say("已收到，民警马上到", mention_ids=[RES1])
    entry = await sandbox.wait_for(JINXIU, lambda m: m["from"] == BOT, after=after)
    assert entry["text"] == "@张阿姨 已收到，民警马上到"  # python-wechaty prefixes the @names itself
    assert entry["mentions"] == [RES1]
    assert entry["room"] == JINXIU and entry["to"] is None and entry["type"] == 7
    assert entry["from_name"] == "花木派出所公号"
    assert sent is not None and sent.message_id == entry["id"]
    echo = await bot.next_message(lambda m: m.message_id == entry["id"])
    assert echo.is_self()
    assert echo.room() is not None and echo.room().room_id == JINXIU


async def test_bot_contact_say_is_a_private_chat(sandbox: Sandbox, bot: RecordingBot) -> None:
    after = sandbox.log.last_seq
    officer = bot.Contact.load(WANG)
    await officer.ready()
    await officer.say("锦绣小区有新警情")
    entry = await sandbox.wait_for(WANG, lambda m: m["from"] == BOT, after=after)
    assert (entry["conversation"], entry["to"], entry["room"]) == (WANG, WANG, None)
    echo = await bot.next_message(lambda m: m.message_id == entry["id"])
    assert echo.is_self() and echo.room() is None and echo.text() == "锦绣小区有新警情"


async def test_room_join_leave_and_topic_events(sandbox: Sandbox, bot: RecordingBot) -> None:
    await sandbox.join(JINXIU, "wxid_res_08", inviter=WANG)
    kind, room, invitees, inviter = await asyncio.wait_for(bot.room_events.get(), 10)
    assert (kind, room.room_id, invitees, inviter) == ("join", JINXIU, ["wxid_res_08"], WANG)
    assert "wxid_res_08" in sandbox.world.room(JINXIU).members
    assert {m.contact_id for m in await room.member_list()} >= {"wxid_res_08"}

    await sandbox.leave(JINXIU, "wxid_res_08")
    kind, room, leavers, remover = await asyncio.wait_for(bot.room_events.get(), 10)
    assert (kind, room.room_id, leavers, remover) == ("leave", JINXIU, ["wxid_res_08"], "wxid_res_08")

    await sandbox.set_topic(FANGDIAN, "芳甸路平安群", "wxid_officer_chen")
    kind, room, new, old, changer = await asyncio.wait_for(bot.room_events.get(), 10)
    assert (kind, room.room_id, new, old, changer) == (
        "topic",
        FANGDIAN,
        "芳甸路平安群",
        "芳甸路居民群",
        "wxid_officer_chen",
    )
    with pytest.raises(SandboxError, match="already in"):
        await sandbox.join(JINXIU, RES1)


async def test_python_wechaty_itself_drops_a_redelivered_message(sandbox: Sandbox, bot: RecordingBot) -> None:
    """Documents python-wechaty 0.10.7: a process-wide id set (SingleIdContainer) swallows
    repeated message events before on_message, so a redelivery never reaches handlers."""
    first = await sandbox.say(RES1, "重复投递", room=JINXIU)
    await bot.next_message(lambda m: m.message_id == first)
    await sandbox.say(RES1, "重复投递", room=JINXIU, message_id=first)
    marker = await sandbox.say(RES1, "之后的一条", room=JINXIU)
    seen: list[str] = []
    await bot.next_message(lambda m: seen.append(m.message_id) is None and m.message_id == marker)
    assert seen == [marker]
    assert [m["id"] for m in sandbox.messages(JINXIU)] == [first, marker]


async def test_ding_answers_with_dong(bot: RecordingBot) -> None:
    got: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_dong(data: str) -> None:
        if not got.done():
            got.set_result(data)

    bot.on("dong", on_dong)
    await bot.puppet.ding("ping-42")
    assert await asyncio.wait_for(got, 10) == "ping-42"


async def test_sandbox_stop_ends_the_client_cleanly(sandbox: Sandbox, bot: RecordingBot) -> None:
    assert bot.task is not None
    await sandbox.stop()
    await asyncio.wait_for(bot.task, 5)  # the event stream ended; no reconnect-after-60s path
    assert bot.task.exception() is None
    assert not sandbox.connected
    bot.puppet.channel.close()


# -- the gRPC protocol directly ------------------------------------------------------------
async def test_wrong_token_is_refused(sandbox: Sandbox) -> None:
    async with raw_stub(sandbox, token="not-the-token") as stub:
        for call in (stub.stop, stub.start, stub.version, lambda: stub.contact_payload(id=RES1)):
            with pytest.raises(GRPCError) as err:
                await call()
            assert err.value.status == Status.UNAUTHENTICATED
        with pytest.raises(GRPCError) as err:
            async for _ in stub.event():
                pass
        assert err.value.status == Status.UNAUTHENTICATED
    assert not sandbox.puppet.started
    async with raw_stub(sandbox) as stub:
        assert (await stub.version()).version.startswith("gonghao-sandbox")


async def test_wrong_token_wechaty_never_logs_in(sandbox: Sandbox) -> None:
    b = RecordingBot(WechatyOptions(puppet_options=PuppetOptions(token="wrong", end_point=sandbox.endpoint)))
    try:
        with pytest.raises(GRPCError) as err:
            await asyncio.wait_for(run_bot(b), 10)
        assert err.value.status == Status.UNAUTHENTICATED
    finally:
        b.puppet.channel.close()
    assert not b.logged_in.is_set()
    assert not sandbox.connected


async def test_stop_before_start_and_unimplemented(sandbox: Sandbox) -> None:
    async with raw_stub(sandbox) as stub:
        await stub.stop()  # nothing runs yet: must still succeed
        await stub.stop()
        await stub.start()
        assert sandbox.puppet.started and not sandbox.connected  # no event stream yet
        with pytest.raises(GRPCError) as err:
            await stub.contact_self_qr_code()
        assert err.value.status == Status.UNIMPLEMENTED
        with pytest.raises(GRPCError) as err:
            await stub.contact_payload(id="wxid_nobody")
        assert err.value.status == Status.NOT_FOUND
        with pytest.raises(GRPCError) as err:
            await stub.message_send_text(conversation_id="nowhere@chatroom", text="hi")
        assert err.value.status == Status.INVALID_ARGUMENT
        assert (await stub.contact_payload(id=RES1)).name == "张阿姨"  # still serving
        await stub.stop()
        assert not sandbox.puppet.started


async def test_redelivery_emits_the_event_again_without_a_new_log_entry(sandbox: Sandbox) -> None:
    events: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    async with raw_stub(sandbox) as stub:
        await stub.stop()
        await stub.start()

        async def listen() -> None:
            async for ev in stub.event():
                await events.put((ev.type, ev.payload))

        listener = asyncio.create_task(listen())
        await sandbox.wait_connected(10)
        assert (await events.get())[0] == EventType.EVENT_TYPE_LOGIN
        assert (await events.get())[0] == EventType.EVENT_TYPE_READY
        mid = await sandbox.say(RES1, "同一条消息", room=JINXIU)
        again = await sandbox.say(RES1, "同一条消息", room=JINXIU, message_id=mid)
        assert again == mid
        first, second = await events.get(), await events.get()
        assert first == second == (EventType.EVENT_TYPE_MESSAGE, f'{{"messageId": "{mid}"}}')
        assert [m["id"] for m in sandbox.messages(JINXIU)] == [mid]
        payload = await stub.message_payload(id=mid)
        assert (payload.type, payload.from_id, payload.room_id, payload.to_id) == (7, RES1, JINXIU, "")
        await stub.stop()  # ends the stream gracefully
        await asyncio.wait_for(listener, 5)


# -- the Python API ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"from_id": "wxid_ghost", "text": "hi", "room": JINXIU}, "unknown contact"),
        ({"from_id": RES1, "text": "hi", "room": "nowhere@chatroom"}, "unknown room"),
        ({"from_id": "wxid_res_09", "text": "hi", "room": JINXIU}, "not a member"),
        ({"from_id": RES1, "text": "   ", "room": JINXIU}, "must not be empty"),
        ({"from_id": RES1, "text": "hi", "room": JINXIU, "mentions": ["wxid_res_09"]}, "cannot mention"),
        ({"from_id": RES1, "text": "hi", "to": WANG}, "only with the bot"),
        ({"from_id": BOT, "text": "hi", "room": JINXIU}, "only through the puppet service"),
    ],
)
async def test_say_validates(sandbox: Sandbox, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SandboxError, match=message):
        await sandbox.say(**kwargs)
    assert sandbox.log.last_seq == 0


async def test_wait_for_times_out_listing_what_was_said(sandbox: Sandbox) -> None:
    await sandbox.say(RES1, "有人在吗", room=JINXIU)
    with pytest.raises(TimeoutError) as err:
        await sandbox.wait_for(JINXIU, lambda m: m["from"] == BOT, timeout=0.2)
    assert "张阿姨" in str(err.value) and "有人在吗" in str(err.value)


async def test_wait_for_wakes_on_a_later_message(sandbox: Sandbox) -> None:
    waiter = asyncio.create_task(sandbox.wait_for(JINXIU, lambda m: "第二" in m["text"], timeout=10))
    await sandbox.say(RES1, "第一条", room=JINXIU)
    await sandbox.say("wxid_res_02", "第二条", room=JINXIU)
    entry = await waiter
    assert (entry["from"], entry["seq"], entry["conversation"]) == ("wxid_res_02", 2, JINXIU)


# -- the web chat ------------------------------------------------------------------------------
async def test_api_world(http: aiohttp.ClientSession) -> None:
    async with http.get("/sandbox/api/world") as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["bot"]["id"] == BOT
    assert data["connected"] is False
    assert {c["id"] for c in data["contacts"] if c["role"] == "officer"} >= {WANG, "wxid_officer_li"}
    rooms = {r["id"]: r for r in data["rooms"]}
    assert rooms[JINXIU]["topic"] == "锦绣小区平安群" and BOT in rooms[JINXIU]["members"]


async def test_api_say_and_messages(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    body = {"from": RES1, "room": JINXIU, "to": None, "text": "@花木派出所公号 你好", "mentions": [BOT]}
    async with http.post("/sandbox/api/say", json=body) as resp:
        assert resp.status == 200
        message_id = (await resp.json())["message_id"]
    async with http.post(
        "/sandbox/api/say", json={"from": WANG, "room": None, "to": BOT, "text": "私聊"}
    ) as resp:
        assert resp.status == 200
    async with http.get("/sandbox/api/messages", params={"conversation": JINXIU}) as resp:
        messages = (await resp.json())["messages"]
    assert [(m["id"], m["from"], m["from_name"], m["mentions"]) for m in messages] == [
        (message_id, RES1, "张阿姨", [BOT])
    ]
    assert sandbox.messages(JINXIU)[0]["text"] == "@花木派出所公号 你好"
    async with http.get("/sandbox/api/messages", params={"conversation": JINXIU, "after": "1"}) as resp:
        assert (await resp.json())["messages"] == []
    async with http.get("/sandbox/api/messages", params={"conversation": WANG}) as resp:
        private = (await resp.json())["messages"]
    assert [(m["from"], m["to"], m["room"], m["seq"]) for m in private] == [(WANG, BOT, None, 2)]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"from": "wxid_ghost", "room": JINXIU, "text": "hi"}, "unknown contact"),
        ({"from": RES1, "room": "nowhere@chatroom", "text": "hi"}, "unknown room"),
        ({"from": "wxid_res_09", "room": JINXIU, "text": "hi"}, "not a member"),
        ({"from": RES1, "room": JINXIU, "text": ""}, "non-empty"),
        ({"room": JINXIU, "text": "hi"}, "'from' is required"),
        ({"from": RES1, "room": JINXIU, "text": "hi", "mentions": "all"}, "mentions"),
        ([1, 2], "JSON object"),
    ],
)
async def test_api_say_rejects_bad_requests(
    sandbox: Sandbox, http: aiohttp.ClientSession, body: Any, fragment: str
) -> None:
    async with http.post("/sandbox/api/say", json=body) as resp:
        assert resp.status == 400
        data = await resp.json()
    assert fragment in data["error"]
    assert data["error_zh"]
    assert sandbox.log.last_seq == 0


async def test_api_messages_rejects_bad_queries(http: aiohttp.ClientSession) -> None:
    for params in ({}, {"conversation": "nowhere@chatroom"}, {"conversation": JINXIU, "after": "x"}):
        async with http.get("/sandbox/api/messages", params=params) as resp:
            assert resp.status == 400, params
            assert "error" in await resp.json()


async def test_long_poll_returns_as_soon_as_a_message_arrives(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    async def poll() -> list[dict[str, Any]]:
        params = {"conversation": LIANYANG, "after": "0", "wait": "30"}
        async with http.get("/sandbox/api/messages", params=params) as resp:
            data: list[dict[str, Any]] = (await resp.json())["messages"]
            return data

    started = time.monotonic()
    polling = asyncio.create_task(poll())
    message_id = await sandbox.say("wxid_res_05", "今晚停水吗", room=LIANYANG)
    messages = await asyncio.wait_for(polling, 10)
    assert [m["id"] for m in messages] == [message_id]
    assert time.monotonic() - started < 10


async def test_long_poll_without_news_waits_then_returns_empty(http: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    params = {"conversation": JINXIU, "wait": "0.3"}
    async with http.get("/sandbox/api/messages", params=params) as resp:
        assert (await resp.json())["messages"] == []
    assert time.monotonic() - started >= 0.25


async def test_api_room_management(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    async with http.post("/sandbox/api/join", json={"room": FANGDIAN, "contact": "wxid_res_02"}) as resp:
        assert resp.status == 200
    assert "wxid_res_02" in sandbox.world.room(FANGDIAN).members
    async with http.post("/sandbox/api/leave", json={"room": FANGDIAN, "contact": "wxid_res_02"}) as resp:
        assert resp.status == 200
    assert "wxid_res_02" not in sandbox.world.room(FANGDIAN).members
    async with http.post(
        "/sandbox/api/topic", json={"room": FANGDIAN, "topic": "新群名", "changer": "x"}
    ) as resp:
        assert resp.status == 400
    assert sandbox.world.room(FANGDIAN).topic == "芳甸路居民群"


async def test_pages(http: aiohttp.ClientSession) -> None:
    async with http.get("/") as resp:
        assert resp.status == 200
        assert "居民群" in await resp.text()
    for path in ("/room/jinxiu@chatroom", "/room/jinxiu%40chatroom", f"/chat/{WANG}", f"/chat/{RES1}"):
        async with http.get(path) as resp:
            assert resp.status == 200, path
            assert "发言人" in await resp.text()
    for path in ("/room/nowhere@chatroom", "/chat/wxid_ghost", f"/chat/{BOT}"):
        async with http.get(path) as resp:
            assert resp.status == 404, path
            assert "找不到" in await resp.text()
    for path in ("/static/app.js", "/static/style.css"):
        async with http.get(path) as resp:
            assert resp.status == 200, path


async def test_the_puppet_service_answers_without_nagle_delays(sandbox: Sandbox) -> None:
    """asyncio turns Nagle off only on sockets whose proto is TCP; with proto 0 every unary call waited ~40 ms
    for a delayed ACK (and every benchmark latency was that plus the work). Accepted connections inherit the
    listening socket's proto, so check it and the option on a served connection."""
    import socket

    from grpclib.protocol import H2Protocol

    listening = sandbox._grpc._server.sockets[0]  # type: ignore[union-attr]
    assert listening.proto == socket.IPPROTO_TCP
    served: list[int] = []
    original = H2Protocol.connection_made

    def connection_made(protocol: H2Protocol, transport: Any) -> None:
        if transport.get_extra_info("sockname")[1] == sandbox.grpc_port:  # the server's end of the connection
            served.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        original(protocol, transport)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(H2Protocol, "connection_made", connection_made)
        channel = Channel(host="127.0.0.1", port=sandbox.grpc_port)
        channel._authority = TOKEN  # type: ignore[attr-defined]  # the token travels as :authority
        try:
            await PuppetStub(channel).ding(data="nagle")
        finally:
            channel.close()
    assert served == [1]
