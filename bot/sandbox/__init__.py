"""gonghao's built-in sandbox: a local Wechaty puppet service plus a web chat.

The bot connects to :attr:`Sandbox.endpoint` with python-wechaty exactly as it would
to a real puppet-service gateway; a person (or a test) plays the residents and the
officers through the web chat at :attr:`Sandbox.web_url` or through this API::

    sandbox = Sandbox(load_world(), token="sandbox-token")
    await sandbox.start()
    await sandbox.wait_connected(10)
    seq = sandbox.log.last_seq
    await sandbox.say("wxid_res_01", "有人在吗", room="jinxiu@chatroom", mentions=[sandbox.world.bot.id])
    reply = await sandbox.wait_for("jinxiu@chatroom", lambda m: m["from"] == sandbox.world.bot.id, after=seq)
    await sandbox.stop()
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web as aiohttp_web
from wechaty_grpc.wechaty import puppet as pb

from bot.sandbox.grpc_service import PuppetService, TokenServer
from bot.sandbox.web import create_app
from bot.sandbox.world import ChatLog, Contact, Room, SandboxError, World, WorldError, load_world, parse_world

__all__ = [
    "ChatLog",
    "Contact",
    "Room",
    "Sandbox",
    "SandboxError",
    "World",
    "WorldError",
    "load_world",
    "parse_world",
]

log = logging.getLogger(__name__)


class Sandbox:
    """The puppet service (gRPC) and the web chat (HTTP) over one shared :class:`World`.

    One instance is started once and stopped once; ``stop()`` is idempotent.
    """

    def __init__(
        self, world: World, *, token: str, host: str = "127.0.0.1", grpc_port: int = 0, web_port: int = 0
    ) -> None:
        if not token or not token.isascii():
            raise ValueError("the sandbox token must be a non-empty ASCII string (it travels as :authority)")
        self.world = world
        self.token = token
        self.host = host
        self.grpc_port = grpc_port
        self.web_port = web_port
        self.log = ChatLog()
        self.puppet = PuppetService(world, self.log)
        self._grpc: TokenServer | None = None
        self._runner: aiohttp_web.AppRunner | None = None
        self._running = False
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Bind both ports (0 picks a free one) and start serving."""
        if self._running:
            return
        if self._stopped:
            raise RuntimeError("a Sandbox cannot be restarted after stop(); create a new one")

        # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP,
        # and with proto 0 every unary call waited ~40 ms for the client's delayed ACK.
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM,
                             socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.grpc_port))
            self.grpc_port = sock.getsockname()[1]
            self._grpc = TokenServer([self.puppet], token=self.token)
            await self._grpc.start(sock=sock)
        except BaseException:
            sock.close()
            raise
        try:
            self._runner = aiohttp_web.AppRunner(create_app(self), access_log=None, shutdown_timeout=1.0)
            await self._runner.setup()
            site = aiohttp_web.TCPSite(self._runner, self.host, self.web_port)
            await site.start()
            self.web_port = self._runner.addresses[0][1]
        except BaseException:
            await self._close_servers()
            raise
        self._running = True
        log.info("sandbox: puppet service on %s, web chat on %s", self.endpoint, self.web_url)

    async def stop(self) -> None:
        """Finish event streams gracefully, wake long-polls, close both servers. Idempotent."""
        await self.log.close()
        await self.puppet.shutdown()
        await self._close_servers()
        self._running = False
        self._stopped = True

    async def _close_servers(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        grpc, self._grpc = self._grpc, None
        if grpc is not None:
            grpc.close()
            await grpc.wait_closed()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    @property
    def endpoint(self) -> str:
        """``host:port`` of the puppet service, for ``WECHATY_PUPPET_SERVICE_ENDPOINT``."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def web_url(self) -> str:
        return f"http://{self.host}:{self.web_port}/"

    @property
    def connected(self) -> bool:
        """A client called Start and holds an open Event stream."""
        return self.puppet.connected

    async def wait_connected(self, timeout: float = 10) -> None:
        await self.puppet.wait_state(lambda: self.puppet.connected, timeout, "a bot to connect")

    # -- people acting -------------------------------------------------------------
    async def say(
        self,
        from_id: str,
        text: str,
        *,
        room: str | None = None,
        to: str | None = None,
        mentions: Sequence[str] = (),
        message_id: str | None = None,
    ) -> str:
        """``from_id`` says ``text`` in ``room``, or privately to the bot when ``room`` is None.

        Returns the message id. Passing the ``message_id`` of an earlier message
        re-delivers it (the event is emitted again, the log is unchanged).
        Raises :class:`SandboxError` for unknown ids, non-members, empty text.
        """
        if from_id == self.world.bot.id:
            raise SandboxError("the bot speaks only through the puppet service", "公号只能由机器人程序发言")
        entry = await self.puppet.deliver(
            sender_id=from_id, text=text, room_id=room, to_id=to, mentions=mentions, message_id=message_id
        )
        return str(entry["id"])

    def messages(self, conversation: str, after: int = 0) -> list[dict[str, Any]]:
        """Log entries of ``conversation`` (a room id, or a contact id for a private chat) after ``after``."""
        return self.log.messages(conversation, after)

    async def wait_for(
        self,
        conversation: str,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        after: int = 0,
        timeout: float = 10,
    ) -> dict[str, Any]:
        """The first message of ``conversation`` newer than ``after`` matching ``predicate``.

        Raises ``TimeoutError`` listing what was said there instead.
        """
        return await self.log.wait_for(conversation, predicate, after=after, timeout=timeout)

    def emit_unknown_message(self) -> str:
        """Announce a message that the service then cannot produce: fault injection for tests.

        The event names an id that is in no log, so ``MessagePayload`` answers ``NOT_FOUND``, as a real
        service does when a message expired or was withdrawn between its event and the client's fetch.
        Nothing is logged to any conversation. Returns the id.
        """
        message_id = f"sbx-missing-{uuid.uuid4().hex}"  # never in the log, and unique like every sandbox id
        self.puppet.emit(pb.EventType.EVENT_TYPE_MESSAGE, {"messageId": message_id})
        return message_id

    async def join(self, room: str, contact_id: str, inviter: str | None = None) -> None:
        """``contact_id`` joins ``room`` (invited by ``inviter``, default the owner): a room-join event."""
        self.puppet.join(room, [contact_id], inviter)

    async def leave(self, room: str, contact_id: str, remover: str | None = None) -> None:
        """``contact_id`` leaves ``room`` (removed by ``remover``, default themself): a room-leave event."""
        self.puppet.leave(room, [contact_id], remover)

    async def set_topic(self, room: str, topic: str, changer: str) -> None:
        """``changer`` renames ``room``: a room-topic event."""
        self.puppet.set_topic(room, topic, changer)

    def contact(self, contact_id: str) -> Contact:
        return self.world.contact(contact_id)
