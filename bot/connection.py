"""One station account's link to its puppet service, through python-wechaty.

We drive python-wechaty's pieces ourselves instead of ``Wechaty.start()``: that method swallows errors
(a refused token makes it return, and the process would exit 0) and sleeps a fixed 60 s before one retry.
Here a failure surfaces as :class:`ConnectionFailed` with the reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bot.payload_helper import HelperUnavailable, PayloadHelper
from bot.wechaty_compat import cached_contact, isolate_bot, load_wechaty, register_secret
from handlers.inbound import Inbound

log = logging.getLogger(__name__)

# python-wechaty's MessageType enum names (after its own mapping from the wire) -> our kinds.
_KINDS = {
    "MESSAGE_TYPE_TEXT": "text",
    "MESSAGE_TYPE_IMAGE": "image",
    "MESSAGE_TYPE_AUDIO": "audio",
    "MESSAGE_TYPE_VIDEO": "video",
    "MESSAGE_TYPE_EMOTICON": "emoticon",
    "MESSAGE_TYPE_ATTACHMENT": "file",
    "MESSAGE_TYPE_URL": "url",
    "MESSAGE_TYPE_RECALLED": "recalled",
}
AT_SEPARATOR = "\u2005"  # what WeChat puts after an @name


class ConnectionFailed(RuntimeError):
    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused  # the service said no to our token: retrying will not help


RECONNECT_FIRST_SECONDS = 1.0
RECONNECT_CAP_SECONDS = 30.0
LIVENESS_PROBE_SECONDS = 30.0  # Ding the service this often while connected...
LIVENESS_TIMEOUT_SECONDS = 100.0  # ...and reconnect when nothing at all (no dong, no event) came for this long
# Messages whose payloads are being fetched at once. python-wechaty starts a task per event; with thousands
# queued, their gRPC calls fight over stream slots and throughput falls ~3x. A fixed pool of loaders over a
# queue of event ids keeps the work bounded however many events are waiting.
MESSAGE_LOADERS = 16
# With the payload helper the calls are made in its process, and the limit is on this one's side only the
# round trips waiting (three processes on two cores answer each load later, not slower): more may wait.
HELPER_LOADERS = 64
# intake.payload_helper "auto": the helper takes the loads once they have queued up here for
# AUTO_SUSTAIN_SECONDS (this many waiting or in flight: at the district benchmark's ceiling all the loaders
# are busy and events wait), and keeps them until AUTO_HOLD_SECONDS after the last time they did, so that it
# does not flap. A burst of a few hundred milliseconds does not hand them over: below saturation a load in
# this process answers sooner (one hop fewer between processes).
AUTO_ENGAGE_LOADS = 48
AUTO_SUSTAIN_SECONDS = 1.0
AUTO_HOLD_SECONDS = 10.0


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, which a container or ``taskset`` may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


InboundHandler = Callable[[Inbound], Awaitable[Any]]


@functools.cache
def _wire_kind(wire_type: int) -> str:
    """Our kind for a MessageType number as the service sends it, mapped as python-wechaty maps it."""
    from wechaty_puppet_service.puppet import _map_message_type

    try:
        mapped = _map_message_type(SimpleNamespace(type=wire_type)).type  # type: ignore[arg-type]
    except IndexError:  # a type newer than python-wechaty's table
        return "other"
    return _KINDS.get(mapped.name, "other")


def _is_refusal(exc: BaseException) -> bool:
    status = getattr(getattr(exc, "status", None), "name", "")
    return type(exc).__name__ == "GRPCError" and status in ("UNAUTHENTICATED", "PERMISSION_DENIED")


def redact(token: str) -> str:
    """What logs may say about a token: that there is one, and how long it is."""
    return f"***({len(token)} chars)"


class Connection:
    def __init__(
        self, *, account: str, token: str, endpoint: str, cache_dir: Path, on_inbound: InboundHandler,
        payload_helper_mode: Callable[[], str] = lambda: "off",
    ) -> None:
        self.account = account
        self.probe_seconds = LIVENESS_PROBE_SECONDS
        self.probe_timeout = LIVENESS_TIMEOUT_SECONDS
        self._heard_at = 0.0  # monotonic time of the last sign of life from the service
        self.token = token
        self.endpoint = endpoint
        self.cache_dir = cache_dir
        self.on_inbound = on_inbound
        self.logged_in = asyncio.Event()
        self.login_changed = asyncio.Condition()  # notified on every login (first and after reconnects)
        self.self_id: str | None = None
        self._bot: Any = None
        self._stopping = False
        self.last_event_at: datetime | None = None  # wall clock of the last message event, for /healthz
        self.logged_in_at: datetime | None = None
        self.logins = 0
        self.reconnects = 0
        self.liveness_failures = 0
        self.state = "idle"  # idle, connecting, connected, reconnecting, stopped
        self.unloadable = 0  # message events whose payload could not be fetched (logged, counted)
        self._pending: asyncio.Queue[Any] = asyncio.Queue()  # message events not loaded yet (tiny: ids)
        self._rooms_loading: dict[str, asyncio.Future[None]] = {}  # RoomPayload calls in flight, by room
        self.payload_helper_mode = payload_helper_mode  # off, on, auto; asked on every load (config reloads)
        self.payload_helper: PayloadHelper | None = None
        self._in_process_loads = asyncio.Semaphore(MESSAGE_LOADERS)
        self.helper_fallbacks = 0  # loads made here while the helper was on (starting, gone, or its call failed)
        self.cores = usable_cores()
        self.monotonic = time.monotonic
        self._loads_in_flight = 0
        self._helper_engaged_until = 0.0  # "auto": the helper takes the loads until then (monotonic)
        self._queued_since: float | None = None  # "auto": loads have queued up since then, without a break
        self.helper_engaged = False  # the helper takes the loads now (always when "on")
        self.helper_engagements = 0  # times "auto" handed the loads to the helper since start

    def _build(self) -> Any:
        register_secret(self.token)
        wechaty = load_wechaty(self.cache_dir)
        from wechaty_puppet import PuppetOptions

        connection = self

        class StationBot(wechaty.Wechaty):  # type: ignore[misc,name-defined]
            async def on_login(self, contact: Any) -> None:
                connection.self_id = contact.contact_id
                connection.logins += 1
                connection.logged_in_at = datetime.now(UTC)
                connection.state = "connected"
                log.info("station %s logged in as %s (%s)%s", connection.account, contact.name, contact.contact_id,
                         f" (reconnect #{connection.reconnects})" if connection.reconnects else "")
                connection.logged_in.set()
                async with connection.login_changed:
                    connection.login_changed.notify_all()

        def heard(*_args: Any) -> None:
            connection._heard_at = asyncio.get_running_loop().time()

        options = wechaty.WechatyOptions(
            puppet="wechaty-puppet-service",
            puppet_options=PuppetOptions(token=self.token, end_point=self.endpoint),
        )
        bot = StationBot(options)
        bot.on("dong", heard)
        bot.on("heartbeat", heard)
        return bot

    async def run_forever(self) -> None:
        """Stay connected: reconnect with exponential backoff and jitter (first try within ~1 s, capped at
        ~30 s), forever, without restarting the process. Only a refused token before the first login is
        fatal (a configuration error a person must fix)."""
        loaders = [asyncio.create_task(self._load_messages(), name=f"message-loader-{n}")
                   for n in range(HELPER_LOADERS)]
        try:
            await self._stay_connected()
        finally:
            for loader in loaders:
                loader.cancel()
            await asyncio.gather(*loaders, return_exceptions=True)

    @property
    def pending_events(self) -> int:
        """Message events received and not loaded yet (a backlog after an outage or in a flood)."""
        return self._pending.qsize()

    async def _stay_connected(self) -> None:
        attempt = 0
        while not self._stopping:
            connected_at: datetime | None = None
            try:
                await self.run()
                reason = "the event stream ended"
            except ConnectionFailed as exc:
                if exc.refused and self.logins == 0:
                    raise
                reason = str(exc)
            finally:
                if self.logged_in.is_set():
                    connected_at = self.logged_in_at
                self.logged_in.clear()
                await self._close_bot()
            if self._stopping:
                return
            if connected_at is not None and datetime.now(UTC) - connected_at > timedelta(minutes=1):
                attempt = 0  # it had been up for a while: start the backoff over
            delay = min(RECONNECT_CAP_SECONDS, RECONNECT_FIRST_SECONDS * 2 ** attempt)
            delay *= random.uniform(0.5, 1.0)
            attempt += 1
            self.reconnects += 1
            self.state = "reconnecting"
            log.warning("puppet service connection lost (%s); reconnecting in %.1f s (attempt %s)",
                        reason, delay, attempt)
            await asyncio.sleep(delay)

    async def run(self) -> None:
        """Connect once and listen until the event stream ends or :meth:`stop` is called."""
        self.state = "connecting"
        self._bot = bot = self._build()
        log.info("connecting to puppet service %s (token %s)", self.endpoint, redact(self.token))
        try:
            await bot.init_puppet()
            isolate_bot(bot)
            await bot.init_puppet_event_bridge(bot.puppet)
            self._take_over_message_events(bot.puppet._event_stream)
            bot.puppet._event_stream.on("error", self._listener_failed)
            watchdog = asyncio.create_task(self._watch(bot), name="liveness")
            try:
                await bot.puppet.start()  # returns when the event stream ends
            finally:
                watchdog.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # grpclib, OSError, wechaty-puppet errors all mean the same to us
            raise ConnectionFailed(self._explain(exc), refused=_is_refusal(exc)) from exc
        if not self.logged_in.is_set():
            raise ConnectionFailed(
                f"the puppet service at {self.endpoint} closed the connection before logging in"
            )

    def _take_over_message_events(self, emitter: Any) -> None:
        """Queue message events for our loaders instead of python-wechaty's task per event."""
        for listener in emitter.listeners("message"):
            emitter.remove_listener("message", listener)
        emitter.on("message", self._pending.put_nowait)

    async def _load_messages(self) -> None:
        """One loader: fetch a queued message's payload and hand it on, one at a time. Events wait here while
        disconnected and load after reconnecting."""
        while True:
            event = await self._pending.get()
            await self.logged_in.wait()
            bot = self._bot
            if bot is None:
                continue
            message_id = getattr(event, "message_id", "?")
            self._loads_in_flight += 1
            try:
                inbound = await self._load(bot, message_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a payload the service cannot find, a dropped channel: this one only
                self.unloadable += 1
                log.warning("could not load message %s from the puppet service: %s: %s",
                            message_id, type(exc).__name__, exc)
                continue
            finally:
                self._loads_in_flight -= 1
            try:
                await self.on_inbound(inbound)
            except Exception:
                log.exception("handling message %s failed", message_id)

    async def _watch(self, bot: Any) -> None:
        """Liveness: a service can hang with the stream still open. Ding it; when nothing comes back for
        ``probe_timeout`` seconds, close the channel so that the supervisor reconnects."""
        loop = asyncio.get_running_loop()
        self._heard_at = loop.time()
        while True:
            await asyncio.sleep(self.probe_seconds)
            if not self.logged_in.is_set():
                continue
            silent = loop.time() - self._heard_at
            if silent > self.probe_timeout:
                log.warning("no sign of life from the puppet service for %.0f s; reconnecting", silent)
                self.liveness_failures += 1
                if getattr(bot.puppet, "channel", None) is not None:
                    bot.puppet.channel.close()
                return
            try:
                await bot.puppet.ding("liveness")
            except Exception as exc:  # the next round decides: a failing ding is itself silence
                log.debug("ding failed: %s", exc)

    async def _close_bot(self) -> None:
        bot, self._bot = self._bot, None
        if bot is None:
            return
        try:
            puppet = bot.puppet
            puppet._event_stream.remove_all_listeners()
            puppet._event_stream.on("error", self._listener_failed)
            if getattr(puppet, "channel", None) is not None:
                puppet.channel.close()
                puppet.channel = None
            puppet._puppet_stub = None
        except Exception:  # closing a dead connection: nothing useful to do with an error here
            log.debug("error while closing the puppet channel", exc_info=True)

    def _explain(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        name = type(exc).__name__
        if name == "GRPCError" and getattr(exc, "status", None) is not None:
            status = exc.status.name  # type: ignore[attr-defined]
            if status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                return (f"the puppet service at {self.endpoint} refused the token "
                        f"(WECHATY_PUPPET_SERVICE_TOKEN {redact(self.token)}): {status}")
            return f"the puppet service at {self.endpoint} answered {status}: {exc.message}"  # type: ignore[attr-defined]
        if "ping endpoint" in text or isinstance(exc, OSError):
            return f"cannot reach the puppet service at {self.endpoint}: {text}"
        return f"puppet service {self.endpoint}: {name}: {text}"

    def _listener_failed(self, exc: BaseException) -> None:
        """python-wechaty's own event listeners (loading a message's payload, …) run as pyee tasks; without
        an error listener a failure there is printed as an unhandled-callback traceback."""
        if self._stopping:
            log.debug("event listener ended while stopping: %s", exc)
        else:
            log.warning("python-wechaty event listener failed: %s: %s", type(exc).__name__, exc)

    async def stop(self) -> None:
        self._stopping = True
        self.state = "stopped"
        await self._close_bot()
        helper, self.payload_helper = self.payload_helper, None
        if helper is not None:
            await helper.stop()

    # -- inbound -----------------------------------------------------------------------------------
    async def _load(self, bot: Any, message_id: str) -> Inbound:
        """A message as python-wechaty's ``Message.ready`` would load it, less the sender's ContactPayload:
        that is a second round trip for every new talker, and only reports, questions and private messages
        need the sender's name (``contact_name``). Chit-chat keeps a name only if the contact is cached."""
        payload, kind = await self._message_payload(bot, message_id)
        self.last_event_at = datetime.now(UTC)
        self._heard_at = asyncio.get_running_loop().time()
        topic = None
        if payload.room_id:
            room = bot.Room.load(payload.room_id)
            if not room.is_ready():
                await self._room_ready(room)
            topic = room.payload.topic
        sender_name = ""
        if payload.from_id:
            talker = cached_contact(bot, payload.from_id)
            if talker is not None and talker.is_ready():
                sender_name = talker.payload.name or ""
            elif not payload.room_id:  # private messages are officers' commands and residents' requests
                sender_name = await self.contact_name(payload.from_id)
        return self._to_inbound(payload, kind, topic, sender_name)

    async def _message_payload(self, bot: Any, message_id: str) -> tuple[Any, str]:
        """The MessagePayload and our kind for it: from the payload helper when it is on and can answer
        (``bot/payload_helper.py``), else through python-wechaty in this process."""
        if self.helper_wanted():
            if self.payload_helper is None:
                self.payload_helper = PayloadHelper(self.endpoint, self.token)
            try:
                loaded = await self.payload_helper.load(message_id)
                return loaded, _wire_kind(loaded.wire_type)
            except HelperUnavailable as exc:
                self.helper_fallbacks += 1
                log.debug("message %s loaded in-process: %s", message_id, exc)
        elif self.payload_helper is not None and self.payload_helper_mode() == "off":  # a config reload
            helper, self.payload_helper = self.payload_helper, None
            await helper.stop()
        async with self._in_process_loads:
            payload = await bot.puppet.message_payload(message_id)
        return payload, _KINDS.get(getattr(payload.type, "name", str(payload.type)), "other")

    def helper_wanted(self) -> bool:
        """Whether the next load goes through the payload helper (``intake.payload_helper``). With "auto" on a
        machine of two cores or more, once loads have queued up here for a while, until they have not for a
        while; an idle helper is kept for the next time."""
        mode = self.payload_helper_mode()
        if mode != "auto" or self.cores < 2:  # on one core a helper would only take the bot's own CPU
            self.helper_engaged = mode == "on"
            return self.helper_engaged
        now = self.monotonic()
        queued = self._loads_in_flight + self._pending.qsize()
        if queued < AUTO_ENGAGE_LOADS:
            self._queued_since = None
        elif self._queued_since is None:
            self._queued_since = now
        if self._queued_since is not None and (
                self.helper_engaged or now - self._queued_since >= AUTO_SUSTAIN_SECONDS):
            self._helper_engaged_until = now + AUTO_HOLD_SECONDS
        engaged = now < self._helper_engaged_until
        if engaged != self.helper_engaged:
            self.helper_engaged = engaged
            if engaged:
                self.helper_engagements += 1
                log.info("%s message loads waiting or in flight: the payload helper takes them", queued)
            else:
                log.info("message loads no longer queue up: loading them in the bot's own process again")
        return engaged

    @property
    def helper_state(self) -> str:
        """For /healthz: off (also "auto" on one core); standby ("auto", loads made here); running; down (loads
        made here meanwhile)."""
        mode = self.payload_helper_mode()
        if mode == "off" or (mode == "auto" and self.cores < 2):
            return "off"
        if mode == "auto" and not self.helper_engaged:
            return "standby"
        return "running" if self.payload_helper is not None and self.payload_helper.running else "down"

    async def _room_ready(self, room: Any) -> None:
        """One RoomPayload per room, then cached by python-wechaty, even when several loaders meet a new
        room at once (each used to fetch it, and python-wechaty warned "set payload more than once")."""
        loading = self._rooms_loading.get(room.room_id)
        if loading is None:
            loading = asyncio.ensure_future(room.ready())
            self._rooms_loading[room.room_id] = loading
            loading.add_done_callback(lambda _: self._rooms_loading.pop(room.room_id, None))
        await asyncio.shield(loading)  # a loader cancelled while waiting leaves the fetch to the others

    async def contact_name(self, contact_id: str) -> str:
        """A contact's WeChat name (one ContactPayload round trip unless cached); the id if there is none."""
        bot = self._bot
        if bot is None:
            return contact_id
        contact = bot.Contact.load(contact_id)
        try:
            await contact.ready()
        except Exception as exc:  # an unknown contact: the id will do for a name
            log.debug("no contact payload for %s: %s", contact_id, exc)
            return contact_id
        return contact.payload.name or contact_id

    def _to_inbound(self, payload: Any, kind: str, topic: str | None, sender_name: str) -> Inbound:
        mentions = tuple(getattr(payload, "mention_ids", None) or ())
        timestamp = payload.timestamp or 0
        # The wire carries epoch milliseconds; some services send seconds.
        seconds = timestamp / 1000 if timestamp > 10**11 else float(timestamp)
        sent_at = datetime.fromtimestamp(seconds, UTC) if seconds else datetime.now(UTC)
        return Inbound(
            account=self.account,
            message_id=payload.id,
            sender_id=payload.from_id,
            sender_name=sender_name,
            room_id=payload.room_id or None,
            room_topic=topic,
            text=payload.text or "",
            kind=kind,
            mentions=mentions,
            mentions_bot=bool(self.self_id and self.self_id in mentions),
            sent_at=sent_at,
            is_self=bool(self.self_id and payload.from_id == self.self_id),
            to_id=payload.to_id or None,
        )

    # -- outbound ----------------------------------------------------------------------------------
    async def is_member(self, room_id: str) -> bool:
        """Whether the bot is still in a room (asked of the puppet service, not a cache)."""
        bot = self._bot
        if bot is None or not self.logged_in.is_set():
            raise ConnectionFailed("not connected")
        member_ids = await bot.puppet.room_members(room_id)
        return self.self_id in member_ids

    async def send(self, conversation_id: str, text: str, *, is_room: bool, mentions: list[str]) -> str | None:
        bot = self._bot
        if bot is None or not self.logged_in.is_set():
            raise ConnectionFailed("not connected")
        if is_room and mentions:
            names = []
            for contact_id in mentions:
                contact = bot.Contact.load(contact_id)
                await contact.ready()
                names.append("@" + (contact.name or contact_id))
            text = AT_SEPARATOR.join(names) + AT_SEPARATOR + text
        message_id = await bot.puppet.message_send_text(
            conversation_id=conversation_id, message=text, mention_ids=mentions if is_room else None
        )
        return message_id or None
