"""Fetch message payloads from the puppet service in a helper process, off the bot's event loop.

Every message event carries only an id; its text, sender and room come from one MessagePayload round trip.
In Python that round trip (h2, hpack, grpclib, betterproto) costs about as much CPU as everything else the
bot does with a message, and it all runs on the one event loop every reply and ping waits on. With
``intake.payload_helper`` on, a child process holds its own gRPC channel to the same service and makes
those calls; the bot sends it ids and reads back the fields it needs, a line of JSON each way. The bot's
loop then does a fraction of the work per message, and the other CPU core does the rest.

Nothing depends on the helper: a load it cannot answer (it is starting, died, hung, or its call failed) is
made in the bot's own process instead, through python-wechaty, as without a helper. A helper that dies is
started again on a later load, no sooner than ``RESTART_AFTER_SECONDS`` after its last start, a wait that
doubles for each helper in a row that died soon after starting.

Run as ``python -m bot.payload_helper HOST:PORT`` with the token in ``GONGHAO_HELPER_TOKEN`` (never on the
command line, where ``ps`` would show it). This side imports only grpclib and the generated stubs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOKEN_ENV = "GONGHAO_HELPER_TOKEN"
CALL_TIMEOUT_SECONDS = 10.0  # one MessagePayload call in the helper
ANSWER_TIMEOUT_SECONDS = 30.0  # a load the helper has not answered in this long: the helper is hung
RESTART_AFTER_SECONDS = 5.0
RESTART_CAP_SECONDS = 300.0  # a helper that keeps dying at once is tried ever less often, down to this
LIVED_LONG_SECONDS = 60.0  # a helper that ran this long before it died starts the backoff over
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
WATCH_EVERY_SECONDS = 1.0
STOP_GRACE_SECONDS = 1.0


class HelperUnavailable(RuntimeError):
    """The helper could not answer this load; make it in the bot's own process."""


@dataclass(frozen=True, slots=True)
class LoadedPayload:
    """The fields of a MessagePayload the bot uses (named as python-wechaty names them)."""

    id: str
    text: str
    timestamp: int
    wire_type: int  # the service's MessageType number, before python-wechaty's mapping
    from_id: str
    room_id: str
    to_id: str
    mention_ids: tuple[str, ...]


# -- the bot's side ------------------------------------------------------------------------------------
class _Pipe(asyncio.SubprocessProtocol):
    """One helper process: its answers, line by line, and its end."""

    def __init__(self, on_line: Callable[[bytes], None], on_exit: Callable[[_Pipe], None]) -> None:
        self._buffer = b""
        self._on_line = on_line
        self._on_exit = on_exit
        self.transport: asyncio.SubprocessTransport | None = None
        self.exited = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            self._on_line(line)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)
        self._on_exit(self)

    @property
    def alive(self) -> bool:
        return self.transport is not None and self.transport.get_returncode() is None

    def write(self, data: bytes) -> None:
        stdin = self.transport.get_pipe_transport(0) if self.transport is not None else None
        if isinstance(stdin, asyncio.WriteTransport) and not stdin.is_closing():
            stdin.write(data)

    async def end(self, grace: float) -> None:
        """Close its input (it finishes what it was asked and exits); kill it if it has not within ``grace``."""
        if self.transport is None:
            return
        stdin = self.transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), grace)
        except TimeoutError:
            self.transport.kill()
            await self.exited
        self.transport.close()


class PayloadHelper:
    """The bot's handle on its helper process: :meth:`load` a payload by message id."""

    def __init__(self, endpoint: str, token: str) -> None:
        self.endpoint = endpoint
        self._token = token
        self._pipe: _Pipe | None = None
        self._waiting: dict[int, tuple[asyncio.Future[LoadedPayload], float]] = {}
        self._next = 0
        self._outgoing: list[bytes] = []
        self._started_at: float | None = None
        self._starting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping = False
        self.answer_timeout = ANSWER_TIMEOUT_SECONDS
        self.restart_after = RESTART_AFTER_SECONDS
        self.quick_deaths = 0  # helpers in a row that died within LIVED_LONG_SECONDS of their start
        self.changed = asyncio.Event()  # set whenever a helper starts or ends (for those watching it)
        self.starts = 0
        self.answered = 0  # loads the helper answered
        self.failed = 0  # loads it could not answer (made in the bot's process instead)

    @property
    def restart_delay(self) -> float:
        """How long after a start the next may come: doubled for each helper in a row that died soon."""
        return min(self.restart_after * 2 ** self.quick_deaths, max(RESTART_CAP_SECONDS, self.restart_after))

    @property
    def running(self) -> bool:
        return self._pipe is not None and self._pipe.alive

    @property
    def pid(self) -> int | None:
        return self._pipe.transport.get_pid() if self._pipe is not None and self._pipe.transport else None

    def ensure_started(self) -> None:
        """Start the helper in the background unless it runs, is starting, or started moments ago."""
        if self.running or self._starting is not None or self._stopping:
            return
        now = time.monotonic()
        if self._started_at is not None and now - self._started_at < self.restart_delay:
            return
        self._started_at = now
        self._starting = asyncio.create_task(self._start(), name="payload-helper-start")

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        # The helper runs this very copy of the code, whatever the working directory or installed copy says.
        path = os.pathsep.join(p for p in (str(_PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, **{TOKEN_ENV: self._token, "PYTHONPATH": path})
        try:
            _, pipe = await loop.subprocess_exec(
                lambda: _Pipe(self._answered, self._exited), sys.executable, "-m", "bot.payload_helper",
                self.endpoint, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None,
                env=env,
            )
        except OSError as exc:
            log.warning("could not start the payload helper: %s", exc)
            self.changed.set()
            return
        finally:
            self._starting = None
        assert isinstance(pipe, _Pipe)
        if self._stopping:
            await pipe.end(0.0)
            return
        self._pipe = pipe
        self.starts += 1
        self.changed.set()
        log.info("payload helper started (pid %s)", self.pid)
        if pipe.exited.done():  # it ended before it was ours: its exit was not counted then
            self._exited(pipe)
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="payload-helper-watch")

    async def load(self, message_id: str) -> LoadedPayload:
        """The payload of ``message_id`` as the helper fetched it; :class:`HelperUnavailable` when it cannot."""
        if not self.running:
            self.ensure_started()
            raise HelperUnavailable("the payload helper is not running")
        self._next += 1
        number = self._next
        future: asyncio.Future[LoadedPayload] = asyncio.get_running_loop().create_future()
        self._waiting[number] = (future, time.monotonic())
        if not self._outgoing:  # one write per turn of the loop, however many loads asked in it
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(json.dumps([number, message_id]).encode() + b"\n")
        return await future

    def _flush(self) -> None:
        lines, self._outgoing = self._outgoing, []
        if self._pipe is not None:
            self._pipe.write(b"".join(lines))  # a load written to a dying helper fails when its exit is seen

    def _answered(self, line: bytes) -> None:
        try:
            number, error, fields = json.loads(line)
        except ValueError:
            log.warning("payload helper wrote an unreadable line: %r", line[:200])
            return
        waiting = self._waiting.pop(number, None)
        if waiting is None or waiting[0].done():
            return
        if error is not None:
            self.failed += 1
            waiting[0].set_exception(HelperUnavailable(error))
            return
        self.answered += 1
        message_id, text, timestamp, wire_type, from_id, room_id, to_id, mentions = fields
        waiting[0].set_result(LoadedPayload(message_id, text, timestamp, wire_type, from_id, room_id, to_id,
                                            tuple(mentions)))

    def _exited(self, pipe: _Pipe) -> None:
        if pipe is not self._pipe:  # a helper already replaced or stopped
            return
        code = pipe.transport.get_returncode() if pipe.transport is not None else None
        lived = time.monotonic() - (self._started_at or 0.0)
        self.quick_deaths = 0 if lived > LIVED_LONG_SECONDS else self.quick_deaths + 1
        self.changed.set()
        log.warning("payload helper exited (code %s) after %.0f s; loading in the bot's process, a new helper in "
                    "%.0f s at the earliest", code, lived, self.restart_delay)
        self._pipe = None
        self._fail_all("the payload helper exited")

    def _fail_all(self, reason: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for future, _ in waiting.values():
            if not future.done():
                self.failed += 1
                future.set_exception(HelperUnavailable(reason))

    async def _watch(self) -> None:
        """A helper that is alive but answers nothing would hold its loads forever: end it."""
        while True:
            await asyncio.sleep(WATCH_EVERY_SECONDS)
            oldest = min((asked for _, asked in self._waiting.values()), default=None)
            if oldest is not None and time.monotonic() - oldest > self.answer_timeout:
                log.warning("payload helper answered nothing for %.1f s; ending it", self.answer_timeout)
                self._fail_all("the payload helper stopped answering")
                if self._pipe is not None and self._pipe.transport is not None:
                    self._pipe.transport.kill()

    async def stop(self) -> None:
        self._stopping = True
        if self._starting is not None:
            self._starting.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        pipe, self._pipe = self._pipe, None
        self._fail_all("the payload helper was stopped")
        if pipe is not None:
            await pipe.end(STOP_GRACE_SECONDS)
        self.changed.set()


# -- the helper's side -----------------------------------------------------------------------------------
async def _serve(endpoint: str, token: str) -> None:
    from grpclib.client import Channel
    from wechaty_grpc.wechaty import PuppetStub

    host, _, port = endpoint.rpartition(":")
    channel = Channel(host=host, port=int(port))
    channel._authority = token  # how python-wechaty's PuppetService presents the token
    stub = PuppetStub(channel, timeout=CALL_TIMEOUT_SECONDS)  # grpclib's own deadline: no task per call
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    answers: list[bytes] = []
    calls: set[asyncio.Task[None]] = set()

    def flush() -> None:
        data = b"".join(answers)
        answers.clear()
        try:
            out.write(data)
            out.flush()
        except BrokenPipeError:  # the bot is gone; our input ends too, and we exit without a traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())

    async def answer(number: int, message_id: str) -> None:
        reply: list[Any]
        try:
            r = await stub.message_payload(id=message_id)
            reply = [number, None, [r.id, r.text, r.timestamp, int(r.type), r.from_id, r.room_id, r.to_id,
                                    list(r.mention_ids)]]
        except Exception as exc:  # the bot loads this one itself, and sees the error there if it persists
            error = f"{type(exc).__name__}: {exc}"
            reply = [number, error.replace(token, "***") if token else error, None]
        if not answers:
            loop.call_soon(flush)
        answers.append(json.dumps(reply, ensure_ascii=False).encode() + b"\n")

    while line := await reader.readline():
        number, message_id = json.loads(line)
        task = asyncio.create_task(answer(number, message_id))
        calls.add(task)
        task.add_done_callback(calls.discard)
    if calls:  # the bot closed our input: finish what was asked
        await asyncio.wait(calls, timeout=CALL_TIMEOUT_SECONDS)
    if answers:
        flush()
    channel.close()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="payload helper: %(levelname)s %(message)s")
    token = os.environ.pop(TOKEN_ENV, "")
    asyncio.run(_serve(sys.argv[1], token))


if __name__ == "__main__":
    main()
