"""Faults done to real processes. The puppet service (the sandbox, `python main.py sandbox`) is killed with SIGKILL
and started again on the same ports while residents keep talking; the bot (`python main.py`, its own process, in
production mode: WECHATY_PUPPET_SERVICE_TOKEN/ENDPOINT) must reconnect on its own, without being restarted, and
answer what arrives afterwards. Residents act only through the sandbox's HTTP JSON API, as a script would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import BOT, JINXIU, ROOT, WANG, write_config

TOKEN = "fault-process-token-7c1d"
# Generous but bounded: the bot's backoff starts at ~1 s and doubles (cap 30 s); the test restarts the service
# right after the bot's first failed retry, so the next retry is due within ~2 s. Process start-up (imports, the
# database) takes a few seconds on a slow machine.
START_TIMEOUT = 60.0
RECONNECT_TIMEOUT = 30.0
REPLY_TIMEOUT = 30.0


class Child:
    """A subprocess whose merged stdout/stderr is read continuously into ``lines`` (and a log file), so that a
    test waits for what the process says instead of sleeping."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._log = log_path.open("a", encoding="utf-8")
        self._reader = asyncio.create_task(self._read(), name=f"read-{name}")

    @classmethod
    async def start(cls, name: str, args: list[str], *, cwd: Path, env: dict[str, str]) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "main.py"), *args, cwd=cwd, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        return cls(name, process, cwd / f"{name}.log")

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := (await self.process.stdout.readline()).decode("utf-8", "replace"):
            self.lines.append(line)
            self._log.write(line)
            self._log.flush()
            self._changed.set()
        self._changed.set()  # end of output: wake waiters so that they can fail with what was said

    def find(self, pattern: str, start: int = 0) -> re.Match[str] | None:
        return next((m for line in self.lines[start:] if (m := re.search(pattern, line))), None)

    async def wait_line(self, pattern: str, *, start: int = 0, timeout: float) -> re.Match[str]:
        """The first output line from index ``start`` on that matches ``pattern``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    if found := self.find(pattern, start):
                        return found
                    if self._reader.done():
                        break
                    await self._changed.wait()
        except TimeoutError:
            pass
        raise AssertionError(f"{self.name}: no line matching {pattern!r} within {timeout} s "
                             f"(exit code {self.process.returncode}); it said:\n{self.output[-4000:]}")

    async def next_output(self, timeout: float) -> None:
        """Return on the process's next output line, or after ``timeout`` seconds without one."""
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the process (if it still runs) and wait for it and for the end of its output."""
        if self.process.returncode is None:
            self.process.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
            await asyncio.wait_for(self._reader, timeout)
        finally:
            if self.process.returncode is None:  # did not stop in time: never leave it behind
                self.process.kill()
                await self.process.wait()
            self._reader.cancel()
            self._log.close()
        return code


async def start_sandbox(tmp: Path, env: dict[str, str], grpc_port: int, web_port: int, name: str
                        ) -> tuple[Child, str, str]:
    """`main.py sandbox` on the given ports (0 = any free one); returns it, its endpoint and its web URL."""
    child = await Child.start(name, ["sandbox", "--grpc-port", str(grpc_port), "--web-port", str(web_port)],
                              cwd=tmp, env=env)
    ready = await child.wait_line(r"sandbox running: puppet service (\S+:\d+)\s+web chat (http://\S+/)",
                                  timeout=START_TIMEOUT)
    return child, ready.group(1), ready.group(2)


async def say(http: aiohttp.ClientSession, sender: str, text: str, *, room: str | None = None) -> str:
    async with http.post("/sandbox/api/say", json={"from": sender, "room": room, "text": text}) as response:
        body = await response.json()
        assert response.status == 200, body
        return str(body["message_id"])


async def bot_says(http: aiohttp.ClientSession, conversation: str, pattern: str, timeout: float = REPLY_TIMEOUT
                   ) -> dict[str, Any]:
    """Long-poll a conversation until the bot says something matching ``pattern``."""
    after = 0
    seen: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                params = {"conversation": conversation, "after": str(after), "wait": "5"}
                async with http.get("/sandbox/api/messages", params=params) as response:
                    messages: list[dict[str, Any]] = (await response.json())["messages"]
                seen += messages
                if messages:
                    after = messages[-1]["seq"]
                for message in messages:
                    if message["from"] == BOT and re.search(pattern, message["text"]):
                        return message
    except TimeoutError:
        raise AssertionError(f"the bot said nothing matching {pattern!r} in {conversation} within {timeout} s; "
                             f"said there: {[(m['from'], m['text']) for m in seen]}") from None


async def test_bot_reconnects_on_its_own_when_the_sandbox_process_is_killed_and_restarted(
        tmp_path: Path, default_config_text: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECHATY_")}
    env["WECHATY_PUPPET_SERVICE_TOKEN"] = TOKEN  # the sandbox takes its token from here too
    clock = tmp_path / "clock.txt"
    clock.write_text("2026-11-27T10:00:00+08:00", encoding="utf-8")  # a Friday morning: 王警官 on shift
    config = write_config(tmp_path, default_config_text)
    children: list[Child] = []
    try:
        first, endpoint, web_url = await start_sandbox(tmp_path, env, 0, 0, "sandbox-1")
        children.append(first)
        grpc_port, web_port = int(endpoint.rsplit(":", 1)[1]), int(web_url.rstrip("/").rsplit(":", 1)[1])
        bot = await Child.start("bot", ["--config", str(config)], cwd=tmp_path, env={
            **env, "WECHATY_PUPPET_SERVICE_ENDPOINT": endpoint, "GONGHAO_CLOCK_FILE": str(clock)})
        children.append(bot)
        bot_pid = bot.process.pid
        await bot.wait_line(r"logged in and listening", timeout=START_TIMEOUT)

        async with aiohttp.ClientSession(web_url) as http:
            await say(http, "wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)
            assert "119" in (await bot_says(http, JINXIU, "119"))["text"]
            await bot_says(http, WANG, r"警情 #1")  # the outbox is drained: nothing in flight at the kill

            # The puppet service dies the hard way: no goodbye on the event stream, sockets torn down.
            assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
            lost_at = len(bot.lines)
            # Residents keep talking while it is down: every attempt fails. They go on until the bot has both
            # noticed the loss and failed a retry of its own against the dead address (attempt 2).
            failed = 0
            retried = r"puppet service connection lost .*reconnecting in [\d.]+ s \(attempt 2\)"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + RECONNECT_TIMEOUT
            while failed < 3 or bot.find(retried, lost_at) is None:
                assert loop.time() < deadline, f"the bot never retried while the service was down:\n{bot.output}"
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    await say(http, f"wxid_res_0{failed % 6 + 1}", f"喂？有人吗 {failed}", room=JINXIU)
                    raise AssertionError("a message was accepted while the sandbox process was dead")
                failed += 1
                await bot.next_output(0.25)  # paced by what the bot says, at most a quarter second apart
            assert bot.process.returncode is None, bot.output[-3000:]

        # A new sandbox process on the same ports: same world and token, empty chat log.
        relogins = len(bot.lines)
        second, endpoint2, web_url2 = await start_sandbox(tmp_path, env, grpc_port, web_port, "sandbox-2")
        children.append(second)
        assert (endpoint2, web_url2) == (endpoint, web_url) and second.process.pid != first.process.pid
        await bot.wait_line(r"station huamu logged in as .*\(reconnect #\d+\)", start=relogins,
                            timeout=RECONNECT_TIMEOUT)

        async with aiohttp.ClientSession(web_url) as http:
            async with http.get("/sandbox/api/world") as response:
                assert (await response.json())["connected"] is True
            async with http.get("/sandbox/api/messages", params={"conversation": JINXIU}) as response:
                assert (await response.json())["messages"] == []  # really a fresh process: the log was lost
            await say(http, "wxid_res_02", "一个三四岁的小男孩光着脚在外到处找妈妈", room=JINXIU)
            assert "孩子" in (await bot_says(http, JINXIU, "孩子"))["text"]
            ping = await bot_says(http, WANG, r"警情 #2")  # the database outlived the outage: numbering goes on
            assert "锦绣小区平安群" in ping["text"]

        # the same bot process did all of this: never restarted, still running
        assert bot.process.returncode is None and bot.process.pid == bot_pid
        assert len(re.findall(r"logged in and listening", bot.output)) == 1
        assert await bot.stop() == 0
        assert await second.stop() == 0
        assert not any(TOKEN in child.output for child in children)  # the ready lines name only its source
        assert "Traceback" not in bot.output, bot.output[-4000:]
    finally:
        for child in reversed(children):
            await child.stop(signal.SIGKILL)
