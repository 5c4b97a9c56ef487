"""The sandbox's puppet service: Wechaty's ``wechaty.Puppet`` gRPC protocol, served with grpclib.

python-wechaty's ``PuppetService`` client talks to this exactly as it would to a
real puppet-service gateway:

* the token travels in the HTTP/2 ``:authority`` header; :class:`TokenServer`
  refuses any other value with ``UNAUTHENTICATED``;
* ``Stop`` (always called first, must succeed when idle) then ``Start`` then one
  long-lived server-streaming ``Event`` call;
* several clients of the one account may listen at once (several bot processes of
  one station): every event goes to every open ``Event`` stream, and a client's
  ``Stop`` ends only the streams of its own connection. (The official Node service
  serves one ``Event`` stream and its ``Stop`` stops the whole puppet.)
* event payloads are JSON strings with camelCase keys; message types use the Node
  puppet numbering (Text = 7); timestamps are epoch milliseconds;
* methods not served here answer ``UNIMPLEMENTED``.

:class:`TokenServer` hooks grpclib's (0.4.x) per-connection ``Handler``, because
grpclib exposes no public way to read ``:authority`` on the server side; the
wrong-token test in ``tests/test_sandbox.py`` guards that hook.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

import betterproto
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from grpclib.server import Handler as _ConnectionHandler
from grpclib.server import Server, Stream, request_handler
from wechaty_grpc.wechaty import puppet as pb

from bot.sandbox.world import ChatLog, Contact, Entry, Room, SandboxError, World

__all__ = ["SANDBOX_VERSION", "PuppetService", "TokenServer", "now_ms"]

log = logging.getLogger(__name__)

SANDBOX_VERSION = "gonghao-sandbox/0.1.0"

ET = pb.EventType


def now_ms() -> int:
    return int(time.time() * 1000)


def _new_message_id() -> str:
    # Globally unique: python-wechaty keeps a process-wide set of seen message ids
    # and silently drops repeats, so ids must never be reused across sandboxes.
    return f"sbx-{uuid.uuid4().hex}"


class PuppetService:
    """State and RPC handlers of the sandbox puppet (one logged-in bot account)."""

    def __init__(self, world: World, chat_log: ChatLog) -> None:
        self.world = world
        self.log = chat_log
        self._started = False
        # Each open Event stream with the client connection (peer address) that opened it, so that one
        # client's Stop leaves the others listening.
        self._streams: dict[asyncio.Queue[pb.EventResponse | None], object] = {}
        self._state_event = asyncio.Event()
        self.contact_payloads_asked: Counter[str] = Counter()  # contact id -> ContactPayload calls
        self.room_payloads_asked: Counter[str] = Counter()  # room id -> RoomPayload calls
        # A fault for tests, by RPC name ("MessageSendText", "RoomPayload"): the call is carried out at once
        # (a send is posted and echoed) but answered this many seconds later, as a real service under
        # strain can do, even after the caller has stopped waiting.
        self.answer_delay: dict[str, float] = {}
        # A fault for tests, by conversation id: a MessageSendText to it hangs (posts nothing, answers nothing)
        # until the event is set, as a service stuck on one chat can.
        self.send_holds: dict[str, asyncio.Event] = {}

    # -- connection state ------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._started

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def connected(self) -> bool:
        """A client called Start and holds an open Event stream."""
        return self._started and bool(self._streams)

    def _state_changed(self) -> None:
        self._state_event.set()
        self._state_event = asyncio.Event()

    async def wait_state(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._state_event.wait()
        except TimeoutError:
            raise TimeoutError(
                f"sandbox: timed out after {timeout}s waiting for {what} "
                f"(started={self._started}, open event streams={len(self._streams)})"
            ) from None

    # -- events ------------------------------------------------------------------
    @staticmethod
    def _event(event_type: pb.EventType, payload: Mapping[str, Any]) -> pb.EventResponse:
        return pb.EventResponse(type=event_type, payload=json.dumps(payload, ensure_ascii=False))

    def emit(self, event_type: pb.EventType, payload: Mapping[str, Any]) -> None:
        """Send one event to every open Event stream."""
        event = self._event(event_type, payload)
        for queue in self._streams:
            queue.put_nowait(event)

    def _login_events(self) -> list[pb.EventResponse]:
        return [
            self._event(ET.EVENT_TYPE_LOGIN, {"contactId": self.world.bot.id}),
            self._event(ET.EVENT_TYPE_READY, {"data": "ready"}),
        ]

    def end_streams(self) -> None:
        """Finish every open Event stream gracefully (the client's event loop then returns)."""
        for queue in self._streams:
            queue.put_nowait(None)

    async def shutdown(self, timeout: float = 2.0) -> None:
        self._started = False
        self.end_streams()
        self._state_changed()
        try:
            await self.wait_state(lambda: not self._streams, timeout, "event streams to close")
        except TimeoutError:
            log.warning("sandbox: %d event stream(s) did not close in time", len(self._streams))

    # -- the world changing ------------------------------------------------------
    async def deliver(
        self,
        *,
        sender_id: str,
        text: str,
        room_id: str | None = None,
        to_id: str | None = None,
        mentions: Sequence[str] = (),
        message_id: str | None = None,
    ) -> Entry:
        """Validate, log and announce one text message; the single path for everybody's messages."""
        world = self.world
        sender = world.contact(sender_id)
        bot = world.bot
        if message_id is not None and (existing := self.log.get(message_id)) is not None:
            if existing["from"] != sender_id or existing["room"] != room_id:
                raise SandboxError(
                    f"message {message_id!r} was said by {existing['from']!r} in "
                    f"{existing['conversation']!r}; cannot re-deliver it as {sender_id!r}/{room_id!r}",
                    f"消息 {message_id} 的发送人或会话不一致，无法重复投递",
                )
            self.emit(ET.EVENT_TYPE_MESSAGE, {"messageId": message_id})
            return existing
        if not isinstance(text, str) or not text.strip():
            raise SandboxError("message text must not be empty", "消息内容不能为空")
        mention_ids = list(dict.fromkeys(mentions))
        to: str | None
        if room_id is not None:
            room = world.room(room_id)
            if to_id is not None:
                raise SandboxError(
                    "give either a room or a private recipient, not both", "群聊和私聊只能选一个"
                )
            if sender.id not in room.members:
                raise SandboxError(
                    f"{sender.id} ({sender.name}) is not a member of {room.id} ({room.topic})",
                    f"{sender.name} 不在群「{room.topic}」里",
                )
            for mid in mention_ids:
                if mid not in room.members:
                    raise SandboxError(
                        f"cannot mention {mid!r}: not a member of {room.id}",
                        f"无法 @{world.name_of(mid)}：不是本群成员",
                    )
            conversation, to = room.id, None
        else:
            if mention_ids:
                raise SandboxError("mentions only exist in rooms", "私聊不能 @ 别人")
            if sender.id == bot.id:
                if to_id is None or to_id == bot.id:
                    raise SandboxError(
                        "the bot needs a recipient for a private message", "公号私聊需要指定对象"
                    )
                conversation = to = world.contact(to_id).id
            else:
                if to_id is not None and to_id != bot.id:
                    raise SandboxError(
                        f"private chats are only with the bot ({bot.id}), not {to_id!r}",
                        f"沙盒里只能和「{bot.name}」私聊",
                    )
                conversation, to = sender.id, bot.id
        entry = await self.log.append(
            message_id=message_id or _new_message_id(),
            conversation=conversation,
            room=room_id,
            sender=sender,
            to=to,
            text=text,
            mentions=mention_ids,
            timestamp=now_ms(),
        )
        self.emit(ET.EVENT_TYPE_MESSAGE, {"messageId": entry["id"]})
        return entry

    def join(self, room_id: str, contact_ids: Collection[str], inviter: str | None = None) -> None:
        room = self.world.room(room_id)
        inviter_id = self.world.contact(inviter).id if inviter else room.owner
        if inviter_id not in room.members:
            raise SandboxError(f"inviter {inviter_id!r} is not in {room_id}", "邀请人不在群里")
        if not contact_ids:
            raise SandboxError("nobody to add", "没有要加入的人")
        for cid in contact_ids:
            contact = self.world.contact(cid)
            if cid in room.members:
                raise SandboxError(f"{cid} is already in {room_id}", f"{contact.name} 已经在群里了")
        room.members.extend(contact_ids)
        self.emit(
            ET.EVENT_TYPE_ROOM_JOIN,
            {
                "inviteeIdList": list(contact_ids),
                "inviterId": inviter_id,
                "roomId": room.id,
                "timestamp": now_ms(),
            },
        )

    def leave(self, room_id: str, contact_ids: Collection[str], remover: str | None = None) -> None:
        room = self.world.room(room_id)
        if not contact_ids:
            raise SandboxError("nobody to remove", "没有要移出的人")
        for cid in contact_ids:
            contact = self.world.contact(cid)
            if cid not in room.members:
                raise SandboxError(f"{cid} is not in {room_id}", f"{contact.name} 不在群里")
            if cid == room.owner:
                raise SandboxError(f"the owner {cid} cannot leave {room_id}", "群主不能退群")
        remover_id = self.world.contact(remover).id if remover else next(iter(contact_ids))
        room.members[:] = [m for m in room.members if m not in contact_ids]
        self.emit(
            ET.EVENT_TYPE_ROOM_LEAVE,
            {
                "removeeIdList": list(contact_ids),
                "removerId": remover_id,
                "roomId": room.id,
                "timestamp": now_ms(),
            },
        )

    def set_topic(self, room_id: str, topic: str, changer: str) -> None:
        room = self.world.room(room_id)
        who = self.world.contact(changer)
        if who.id not in room.members:
            raise SandboxError(f"{who.id} is not in {room_id}", f"{who.name} 不在群里")
        topic = topic.strip()
        if not topic:
            raise SandboxError("the topic must not be empty", "群名不能为空")
        old, room.topic = room.topic, topic
        self.emit(
            ET.EVENT_TYPE_ROOM_TOPIC,
            {
                "changerId": who.id,
                "newTopic": topic,
                "oldTopic": old,
                "roomId": room.id,
                "timestamp": now_ms(),
            },
        )

    # -- RPC plumbing ------------------------------------------------------------
    def __mapping__(self) -> dict[str, Handler]:
        unary: dict[str, tuple[Callable[[Any], Awaitable[Any]], type, type]] = {
            "Start": (self.rpc_start, pb.StartRequest, pb.StartResponse),
            "Stop": (self.rpc_stop, pb.StopRequest, pb.StopResponse),
            "Logout": (self.rpc_logout, pb.LogoutRequest, pb.LogoutResponse),
            "Ding": (self.rpc_ding, pb.DingRequest, pb.DingResponse),
            "Version": (self.rpc_version, pb.VersionRequest, pb.VersionResponse),
            "DirtyPayload": (self.rpc_dirty_payload, pb.DirtyPayloadRequest, pb.DirtyPayloadResponse),
            "ContactList": (self.rpc_contact_list, pb.ContactListRequest, pb.ContactListResponse),
            "ContactPayload": (self.rpc_contact_payload, pb.ContactPayloadRequest, pb.ContactPayloadResponse),
            "ContactAlias": (self.rpc_contact_alias, pb.ContactAliasRequest, pb.ContactAliasResponse),
            "TagContactList": (
                self.rpc_tag_contact_list,
                pb.TagContactListRequest,
                pb.TagContactListResponse,
            ),
            "RoomList": (self.rpc_room_list, pb.RoomListRequest, pb.RoomListResponse),
            "RoomPayload": (self.rpc_room_payload, pb.RoomPayloadRequest, pb.RoomPayloadResponse),
            "RoomMemberList": (
                self.rpc_room_member_list,
                pb.RoomMemberListRequest,
                pb.RoomMemberListResponse,
            ),
            "RoomMemberPayload": (
                self.rpc_room_member_payload,
                pb.RoomMemberPayloadRequest,
                pb.RoomMemberPayloadResponse,
            ),
            "RoomTopic": (self.rpc_room_topic, pb.RoomTopicRequest, pb.RoomTopicResponse),
            "RoomAdd": (self.rpc_room_add, pb.RoomAddRequest, pb.RoomAddResponse),
            "RoomDel": (self.rpc_room_del, pb.RoomDelRequest, pb.RoomDelResponse),
            "MessagePayload": (self.rpc_message_payload, pb.MessagePayloadRequest, pb.MessagePayloadResponse),
            "MessageSendText": (
                self.rpc_message_send_text,
                pb.MessageSendTextRequest,
                pb.MessageSendTextResponse,
            ),
        }
        per_client = {"Start", "Stop"}  # these act on the calling client's own event streams
        mapping = {
            f"/wechaty.Puppet/{name}": Handler(
                _unary(func, per_client=name in per_client), Cardinality.UNARY_UNARY, req, resp
            )
            for name, (func, req, resp) in unary.items()
        }
        mapping["/wechaty.Puppet/Event"] = Handler(
            self.rpc_event, Cardinality.UNARY_STREAM, pb.EventRequest, pb.EventResponse
        )
        return mapping

    # -- RPCs ----------------------------------------------------------------------
    async def rpc_event(self, stream: Stream[pb.EventRequest, pb.EventResponse]) -> None:
        await stream.recv_message()
        queue: asyncio.Queue[pb.EventResponse | None] = asyncio.Queue()
        # Replay login/ready for a client that opens its stream after Start (python-wechaty does).
        backlog = self._login_events() if self._started else []
        self._streams[queue] = _client_of(stream)
        self._state_changed()
        try:
            await stream.send_initial_metadata()
            for event in backlog:
                await stream.send_message(event)
            while (event := await queue.get()) is not None:
                await stream.send_message(event)
        finally:
            self._streams.pop(queue, None)
            self._state_changed()

    def _streams_of(self, client: object) -> list[asyncio.Queue[pb.EventResponse | None]]:
        """The event streams ``client`` opened; all of them when the caller is unknown (``None``)."""
        return [queue for queue, owner in self._streams.items() if client is None or owner == client]

    async def rpc_start(self, _: pb.StartRequest, client: object = None) -> pb.StartResponse:
        self._started = True
        # Only the caller logs in: the other clients of this account are logged in already.
        for event in self._login_events():
            for queue in self._streams_of(client):
                queue.put_nowait(event)
        self._state_changed()
        return pb.StartResponse()

    async def rpc_stop(self, _: pb.StopRequest, client: object = None) -> pb.StopResponse:
        # Like the Node puppet service: stopping ends the caller's event stream; safe when idle.
        # Answer only once they have finished, so a client that closes its channel right
        # after Stop (python-wechaty does) sees a clean end of stream, not a dropped connection.
        mine = self._streams_of(client)
        if len(mine) == len(self._streams):
            await self.shutdown(timeout=2.0)  # nobody else listens: the puppet stops
            return pb.StopResponse()
        # Other clients still listen (python-wechaty calls Stop before every Start): they keep their streams.
        for queue in mine:
            queue.put_nowait(None)
        try:
            await self.wait_state(
                lambda: not any(q in self._streams for q in mine), 2.0, "the caller's event streams to close"
            )
        except TimeoutError:
            log.warning("sandbox: %d event stream(s) did not close in time", len(mine))
        return pb.StopResponse()

    async def rpc_logout(self, _: pb.LogoutRequest) -> pb.LogoutResponse:
        if self._started:
            self.emit(ET.EVENT_TYPE_LOGOUT, {"contactId": self.world.bot.id, "data": "logout"})
        self._started = False
        self._state_changed()
        return pb.LogoutResponse()

    async def rpc_ding(self, request: pb.DingRequest) -> pb.DingResponse:
        self.emit(ET.EVENT_TYPE_DONG, {"data": request.data})
        return pb.DingResponse()

    async def rpc_version(self, _: pb.VersionRequest) -> pb.VersionResponse:
        return pb.VersionResponse(version=SANDBOX_VERSION)

    async def rpc_dirty_payload(self, _: pb.DirtyPayloadRequest) -> pb.DirtyPayloadResponse:
        return pb.DirtyPayloadResponse()  # nothing is cached server-side

    async def rpc_contact_list(self, _: pb.ContactListRequest) -> pb.ContactListResponse:
        return pb.ContactListResponse(ids=[c.id for c in self.world.contacts])

    def _contact(self, contact_id: str) -> Contact:
        contact = self.world.find_contact(contact_id)
        if contact is None:
            raise GRPCError(Status.NOT_FOUND, f"unknown contact {contact_id!r}")
        return contact

    async def rpc_contact_payload(self, request: pb.ContactPayloadRequest) -> pb.ContactPayloadResponse:
        self.contact_payloads_asked[request.id] += 1
        contact = self._contact(request.id)
        return pb.ContactPayloadResponse(
            id=contact.id,
            name=contact.name,
            alias=contact.alias,
            type=pb.ContactType.CONTACT_TYPE_PERSONAL,
            gender=pb.ContactGender.CONTACT_GENDER_UNSPECIFIED,
            friend=True,
            signature=contact.title,
            weixin=contact.id,
        )

    async def rpc_contact_alias(self, request: pb.ContactAliasRequest) -> pb.ContactAliasResponse:
        contact = self._contact(request.id)
        if request.alias is not None:
            raise GRPCError(Status.UNIMPLEMENTED, "the sandbox does not support setting aliases")
        return pb.ContactAliasResponse(alias=contact.alias)

    async def rpc_tag_contact_list(self, _: pb.TagContactListRequest) -> pb.TagContactListResponse:
        return pb.TagContactListResponse(ids=[])

    async def rpc_room_list(self, _: pb.RoomListRequest) -> pb.RoomListResponse:
        return pb.RoomListResponse(ids=[r.id for r in self.world.rooms if self.world.bot.id in r.members])

    def _room(self, room_id: str) -> Room:
        room = self.world.find_room(room_id)
        if room is None:
            raise GRPCError(Status.NOT_FOUND, f"unknown room {room_id!r}")
        return room

    async def rpc_room_payload(self, request: pb.RoomPayloadRequest) -> pb.RoomPayloadResponse:
        room = self._room(request.id)
        self.room_payloads_asked[room.id] += 1
        await self._answer_later("RoomPayload")
        return pb.RoomPayloadResponse(
            id=room.id,
            topic=room.topic,
            avatar="",
            owner_id=room.owner,
            admin_ids=[room.owner],
            member_ids=list(room.members),
        )

    async def rpc_room_member_list(self, request: pb.RoomMemberListRequest) -> pb.RoomMemberListResponse:
        return pb.RoomMemberListResponse(member_ids=list(self._room(request.id).members))

    async def rpc_room_member_payload(
        self, request: pb.RoomMemberPayloadRequest
    ) -> pb.RoomMemberPayloadResponse:
        room = self._room(request.id)
        if request.member_id not in room.members:
            raise GRPCError(Status.NOT_FOUND, f"{request.member_id!r} is not a member of {room.id!r}")
        contact = self._contact(request.member_id)
        return pb.RoomMemberPayloadResponse(
            id=contact.id, room_alias="", inviter_id=room.owner, avatar="", name=contact.name
        )

    async def rpc_room_topic(self, request: pb.RoomTopicRequest) -> pb.RoomTopicResponse:
        room = self._room(request.id)
        if request.topic is not None:
            self.set_topic(room.id, request.topic, self.world.bot.id)
        return pb.RoomTopicResponse(topic=room.topic)

    async def rpc_room_add(self, request: pb.RoomAddRequest) -> pb.RoomAddResponse:
        self.join(request.id, [request.contact_id], self.world.bot.id)
        return pb.RoomAddResponse()

    async def rpc_room_del(self, request: pb.RoomDelRequest) -> pb.RoomDelResponse:
        self.leave(request.id, [request.contact_id], self.world.bot.id)
        return pb.RoomDelResponse()

    async def rpc_message_payload(self, request: pb.MessagePayloadRequest) -> pb.MessagePayloadResponse:
        entry = self.log.get(request.id)
        if entry is None:
            raise GRPCError(Status.NOT_FOUND, f"unknown message {request.id!r}")
        return pb.MessagePayloadResponse(
            id=entry["id"],
            filename="",
            text=entry["text"],
            timestamp=entry["timestamp"],
            type=entry["type"],  # Node numbering: Text = 7; python-wechaty maps it to TEXT
            from_id=entry["from"],
            room_id=entry["room"] or "",
            to_id=entry["to"] or "",
            mention_ids=list(entry["mentions"]),
        )

    async def rpc_message_send_text(self, request: pb.MessageSendTextRequest) -> pb.MessageSendTextResponse:
        target = request.conversation_id
        if (hold := self.send_holds.get(target)) is not None:
            await hold.wait()
        is_room = "@" in target
        entry = await self.deliver(
            sender_id=self.world.bot.id,
            text=request.text,
            room_id=target if is_room else None,
            to_id=None if is_room else target,
            mentions=list(request.mentonal_ids),  # sic: the proto field is misspelt
        )
        await self._answer_later("MessageSendText")
        return pb.MessageSendTextResponse(id=entry["id"])

    async def _answer_later(self, rpc: str) -> None:
        if self.answer_delay.get(rpc):
            await asyncio.sleep(self.answer_delay[rpc])


def _client_of(stream: Stream[Any, Any]) -> object:
    """Which client connection a call came over: python-wechaty sends all its calls over one channel."""
    return stream.peer.addr()


def _unary(
    func: Callable[..., Awaitable[betterproto.Message]], *, per_client: bool = False
) -> Callable[[Stream[Any, Any]], Awaitable[None]]:
    async def handle(stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        try:
            reply = await (func(request, _client_of(stream)) if per_client else func(request))
        except SandboxError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from exc
        await stream.send_message(reply)

    return handle


# -- token check and fallbacks -------------------------------------------------------------
async def _unauthenticated(stream: Stream[Any, Any]) -> None:
    raise GRPCError(Status.UNAUTHENTICATED, "invalid token")


async def _unimplemented(stream: Stream[Any, Any]) -> None:
    raise GRPCError(Status.UNIMPLEMENTED, "the gonghao sandbox does not implement this method")


class _Routes(dict[str, Handler]):
    """A route table whose misses answer through ``fallback`` instead of grpclib's bare abort.

    grpclib answers unknown paths with a trailers-only response lacking
    ``content-type``, which its own client reports as ``UNKNOWN``; raising from a
    handler yields a proper ``UNIMPLEMENTED`` (or ``UNAUTHENTICATED``) instead.
    """

    def __init__(
        self, routes: Mapping[str, Handler], fallback: Callable[[Stream[Any, Any]], Awaitable[None]]
    ) -> None:
        super().__init__(routes)
        self._fallback = Handler(fallback, Cardinality.UNARY_UNARY, pb.StartRequest, pb.StartResponse)

    def get(self, key: str, default: Any = None) -> Handler:
        return super().get(key) or self._fallback


class _CheckedHandler(_ConnectionHandler):
    """Dispatches each request to the real mapping only if ``:authority`` carries the token.

    grpclib strips pseudo-headers from the metadata it hands to handlers and to its
    ``RecvRequest`` event, so the check happens here, where the raw headers arrive.
    """

    def __init__(self, *args: Any, token: bytes, denied: dict[str, Handler]) -> None:
        super().__init__(*args)
        self._token = token
        self._denied = denied

    def accept(self, stream: Any, headers: Any, release_stream: Callable[[], Any]) -> None:
        authority = str(dict(headers).get(":authority", ""))
        ok = hmac.compare_digest(authority.encode("utf-8"), self._token)
        mapping = self.mapping if ok else self._denied
        if not ok:
            log.warning("sandbox: refused a gRPC call with a wrong token")
        self.__gc_step__()
        self._tasks[stream] = self.loop.create_task(
            request_handler(
                mapping, stream, headers, self.codec, self.status_details_codec, self.dispatch, release_stream
            )
        )


class TokenServer(Server):
    """A grpclib ``Server`` that refuses calls whose ``:authority`` is not the token."""

    def __init__(self, handlers: Collection[Any], *, token: str) -> None:
        if not token:
            raise ValueError("the sandbox needs a non-empty token")
        super().__init__(handlers)
        self._token = token.encode("utf-8")
        self._served = _Routes(self._mapping, _unimplemented)
        self._denied = _Routes({}, _unauthenticated)

    def _protocol_factory(self) -> H2Protocol:
        self.__gc_step__()
        handler = _CheckedHandler(
            self._served,
            self._codec,
            self._status_details_codec,
            self.__dispatch__,
            token=self._token,
            denied=self._denied,
        )
        self._handlers.add(handler)
        return H2Protocol(handler, self._config, self._h2_config)
