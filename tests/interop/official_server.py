"""Run the official Node Wechaty puppet-service server (wrapping wechaty-puppet-mock) for tests.

``official_server.mjs`` (next to this file) serves the standard puppet-service gRPC
protocol on 127.0.0.1 with TLS disabled, plus a small HTTP JSON control API through
which a test makes mock residents speak and reads what the bot sent.

Usage::

    async with official_puppet_server(world, tmp_path) as srv:
        bot = Wechaty(WechatyOptions(puppet_options=PuppetOptions(
            token=srv.token, end_point=srv.endpoint)))
        ...
        await srv.say("wxid_resident", "有人吗", room="jinxiu@chatroom")
        reply = await srv.wait_for("jinxiu@chatroom", lambda m: m["direction"] == "bot")

Messages returned by :meth:`OfficialPuppetServer.messages` are dicts with the keys
``seq`` (1, 2, ... in creation order), ``id``, ``conversation`` (room id, or the
other party's contact id in a private chat), ``from``, ``to`` (private chats only,
else None), ``room`` (or None), ``text``, ``mentions`` (list of contact ids),
``timestamp`` (epoch ms), ``type`` (Node puppet message type; Text = 7) and
``direction`` ("bot" = sent by the bot through gRPC, "injected" = :meth:`say`).

If ``node_modules`` is missing, ``npm ci`` runs first (about half a minute). A
missing ``node``/``npm`` is an error, never a skip: these are interop tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "official_server.mjs"
NODE_MODULES = HERE / "node_modules"

Message = dict[str, Any]


class OfficialServerError(RuntimeError):
    """The official server (or its npm install) could not be started or driven."""


# --------------------------------------------------------------------------- npm


def _node_modules_complete() -> bool:
    """All direct dependencies installed, and not older than ``package-lock.json``."""
    package = json.loads((HERE / "package.json").read_text(encoding="utf-8"))
    if not all((NODE_MODULES / name / "package.json").is_file() for name in package.get("dependencies", {})):
        return False
    hidden_lock = NODE_MODULES / ".package-lock.json"  # written by npm ci / npm install
    lock = HERE / "package-lock.json"
    if lock.is_file() and hidden_lock.is_file():
        return hidden_lock.stat().st_mtime >= lock.stat().st_mtime
    return True


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise OfficialServerError(
            f"`{name}` is not on PATH: the interop tests need Node.js (>= 18) and npm to run the "
            f"official wechaty-puppet-service server (see {HERE / 'package.json'})."
        )
    return path


async def ensure_node_modules(timeout: float = 600.0) -> None:
    """Install ``tests/interop/node_modules`` with ``npm ci`` if it is missing or incomplete.

    Serialised across processes (e.g. pytest-xdist workers) by a lock file in the
    temp dir, keyed by this folder's path.
    """
    _require_tool("node")
    if _node_modules_complete():
        return
    npm = _require_tool("npm")
    key = hashlib.sha256(str(HERE).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"gonghao-interop-npm-{key}.lock"
    with open(lock_path, "w") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        try:
            if _node_modules_complete():
                return
            command = [npm, "ci"] if (HERE / "package-lock.json").is_file() else [npm, "install"]
            proc = await asyncio.create_subprocess_exec(
                *command,
                "--no-audit",
                "--no-fund",
                cwd=HERE,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise OfficialServerError(
                    f"`{' '.join(command)}` in {HERE} timed out after {timeout}s"
                ) from None
            if proc.returncode != 0 or not _node_modules_complete():
                raise OfficialServerError(
                    f"`{' '.join(command)}` in {HERE} failed (exit {proc.returncode}):\n"
                    + out.decode(errors="replace")[-4000:]
                )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- server handle


class OfficialPuppetServer:
    """A running ``official_server.mjs``; create it with :func:`official_puppet_server`."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        ready: dict[str, Any],
        world: dict[str, Any],
        stderr_tail: deque[str],
        session: aiohttp.ClientSession,
    ) -> None:
        self.process = process
        self.world = world
        self.grpc_port: int = int(ready["grpc_port"])
        self.http_port: int = int(ready["http_port"])
        self.token: str = str(ready["token"])
        self.endpoint = f"127.0.0.1:{self.grpc_port}"
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self._stderr_tail = stderr_tail
        self._session = session

    @property
    def bot_id(self) -> str:
        return str(self.world["bot"]["id"])

    def stderr_tail(self) -> str:
        """The last lines the Node process wrote to stderr (its logs)."""
        return "\n".join(self._stderr_tail)

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self.process.returncode is not None:
            raise OfficialServerError(
                f"official server exited with {self.process.returncode}; stderr:\n{self.stderr_tail()}"
            )
        async with self._session.request(method, self.http_url + path, **kwargs) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                raise OfficialServerError(f"{method} {path} -> HTTP {resp.status}: {body}")
            return body

    async def health(self) -> dict[str, Any]:
        """``{"ok", "logged_in", "ready", "bot_id", "last_seq"}``."""
        return await self._request("GET", "/health")

    async def say(
        self,
        from_id: str,
        text: str,
        room: str | None = None,
        mentions: Iterable[str] = (),
    ) -> str:
        """Make contact ``from_id`` say ``text`` in ``room`` (or privately to the bot).

        The bot receives it as a ``message`` event. Returns the message id.
        """
        body = {"from": from_id, "room": room, "text": text, "mentions": list(mentions)}
        result = await self._request("POST", "/say", json=body)
        return str(result["message_id"])

    async def messages(self, conversation: str | None = None, after: int = 0) -> list[Message]:
        """Messages with ``seq > after`` in ``conversation`` (all conversations if None)."""
        params: dict[str, str] = {"after": str(after)}
        if conversation is not None:
            params["conversation"] = conversation
        result = await self._request("GET", "/messages", params=params)
        return list(result["messages"])

    async def wait_for(
        self,
        conversation: str | None,
        predicate: Callable[[Message], bool],
        timeout: float = 10.0,
        after: int = 0,
        interval: float = 0.05,
    ) -> Message:
        """Poll until a message in ``conversation`` satisfies ``predicate``; return it.

        Raises :class:`TimeoutError` listing every message seen in the conversation.
        """
        deadline = time.monotonic() + timeout
        seen: list[Message] = []
        while True:
            batch = await self.messages(conversation, after=after)
            for message in batch:
                seen.append(message)
                after = max(after, int(message["seq"]))
                if predicate(message):
                    return message
            if time.monotonic() >= deadline:
                listing = "\n".join(
                    f"  #{m['seq']} {m['direction']} {m['from']} -> {m['conversation']}: {m['text']!r}"
                    for m in seen
                )
                raise TimeoutError(
                    f"no matching message in {conversation or 'any conversation'} within {timeout}s; "
                    f"seen {len(seen)}:\n{listing or '  (none)'}"
                )
            await asyncio.sleep(interval)


# --------------------------------------------------------------------------- lifecycle


async def _pump_stderr(stream: asyncio.StreamReader, tail: deque[str], log_path: Path) -> None:
    with open(log_path, "a", encoding="utf-8") as log:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip("\n")
            tail.append(text)
            log.write(text + "\n")
            log.flush()


async def _read_ready_line(stdout: asyncio.StreamReader) -> dict[str, Any]:
    while True:
        line = await stdout.readline()
        if not line:
            raise EOFError("stdout closed before the ready line")
        text = line.decode(errors="replace").strip()
        if text.startswith("{"):
            data = json.loads(text)
            if "grpc_port" in data:
                return data


async def _stop_process(process: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    if process.stdin is not None:
        process.stdin.close()


@contextlib.asynccontextmanager
async def official_puppet_server(
    world: dict[str, Any],
    workdir: str | os.PathLike[str],
    *,
    startup_timeout: float = 60.0,
    grpc_port: int = 0,
    http_port: int = 0,
    token: str | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[OfficialPuppetServer]:
    """Start ``node official_server.mjs`` with ``world``; stop it (SIGTERM) on exit.

    ``workdir`` receives ``world.json`` and ``official_server.log`` (the Node stderr).
    Ports 0 mean "pick free ports"; ``token`` defaults to a fresh ``insecure_<uuid4>``.
    Set ``env={"WECHATY_LOG": "verbose"}`` to get the wechaty libraries' logs.
    """
    await ensure_node_modules()
    node = _require_tool("node")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    world_path = workdir / "world.json"
    world_path.write_text(json.dumps(world, ensure_ascii=False, indent=2), encoding="utf-8")
    log_path = workdir / "official_server.log"

    args = [
        node,
        str(SCRIPT),
        "--world",
        str(world_path),
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--exit-on-stdin-eof",
    ]
    if token is not None:
        args += ["--token", token]
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=HERE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None and process.stderr is not None
    tail: deque[str] = deque(maxlen=200)
    stderr_task = asyncio.create_task(_pump_stderr(process.stderr, tail, log_path))
    stdout_task: asyncio.Task[None] | None = None
    session: aiohttp.ClientSession | None = None
    try:
        try:
            ready = await asyncio.wait_for(_read_ready_line(process.stdout), startup_timeout)
        except (TimeoutError, EOFError, json.JSONDecodeError) as exc:
            await _stop_process(process, timeout=3.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(stderr_task), 2.0)
            reason = (
                f"no ready line within {startup_timeout}s"
                if isinstance(exc, TimeoutError)
                else f"{type(exc).__name__}: {exc}"
            )
            raise OfficialServerError(
                f"official puppet server did not start ({reason}; exit code {process.returncode}). "
                f"stderr:\n" + "\n".join(tail)
            ) from None

        # Keep draining stdout so the child can never block on a full pipe.
        stdout_task = asyncio.create_task(process.stdout.read())
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        yield OfficialPuppetServer(process, ready, world, tail, session)
    finally:
        if session is not None:
            await session.close()
        await _stop_process(process)
        for task in (stdout_task, stderr_task):
            if task is None:
                continue
            # wait_for cancels the task itself if it does not finish in time.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, 3.0)
