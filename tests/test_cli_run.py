"""`python main.py` as a user runs it: a real process, the sandbox, signals, exit codes, and no secrets in logs."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp

from bot.sandbox import Sandbox, load_world
from tests.conftest import ROOT, write_config


async def _read_until(stream: asyncio.StreamReader, pattern: str, seen: list[str], timeout: float = 60) -> str:
    async def scan() -> str:
        while True:
            line = (await stream.readline()).decode("utf-8", "replace")
            if not line:
                raise AssertionError(f"output ended before {pattern!r}; saw:\n{''.join(seen)}")
            seen.append(line)
            if re.search(pattern, line):
                return line

    return await asyncio.wait_for(scan(), timeout)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECHATY_")}
    env.update(extra)
    return env


async def test_wrong_token_exits_non_zero_without_leaking_it(tmp_path: Path, default_config_text: str) -> None:
    secret = "wrong-secret-token-9f8e7d6c"
    async with Sandbox(load_world(None), token="the-real-token-1234") as sandbox:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "main.py"), "--config", str(write_config(tmp_path, default_config_text)),
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=_env(WECHATY_PUPPET_SERVICE_TOKEN=secret, WECHATY_PUPPET_SERVICE_ENDPOINT=sandbox.endpoint),
        )
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    text = output.decode("utf-8", "replace")
    assert process.returncode == 1, text
    assert "refused the token" in text
    assert secret not in text


async def test_token_without_endpoint_is_refused(tmp_path: Path, default_config_text: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "main.py"), "--config", str(write_config(tmp_path, default_config_text)),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=_env(WECHATY_PUPPET_SERVICE_TOKEN="some-token-123"),
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert "WECHATY_PUPPET_SERVICE_ENDPOINT" in output.decode()


async def test_sandbox_run_report_reload_and_clean_stop(tmp_path: Path, default_config_text: str) -> None:
    config = write_config(tmp_path, default_config_text)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "main.py"), "--config", str(config), "--sandbox-web-port", "0",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=_env(),
    )
    assert process.stdout is not None
    seen: list[str] = []
    try:
        url_line = await _read_until(process.stdout, r"web chat http://", seen)
        web = re.search(r"(http://127\.0\.0\.1:\d+/)", url_line)
        assert web is not None
        await _read_until(process.stdout, r"logged in and listening", seen)
        async with aiohttp.ClientSession(web.group(1)) as http:
            async with http.get("/") as page:
                assert page.status == 200 and "<script" in await page.text()
            async with http.get("/sandbox/api/world") as world:
                assert "锦绣小区平安群" in [room["topic"] for room in (await world.json())["rooms"]]
            async with http.post("/sandbox/api/say", json={
                "from": "wxid_res_04", "room": "jinxiu@chatroom", "text": "楼道闻到一股烟焦味!"}) as said:
                assert said.status == 200
            reply = None
            after = 0
            for _ in range(20):  # each call long-polls up to 5 s for something new
                async with http.get("/sandbox/api/messages", params={
                        "conversation": "jinxiu@chatroom", "after": str(after), "wait": "5"}) as got:
                    messages = (await got.json())["messages"]
                if messages:
                    after = messages[-1]["seq"]
                reply = next((m for m in messages if m["from"] == "wxid_gonghao_bot"), None)
                if reply:
                    break
            assert reply is not None and "119" in reply["text"]

        config.write_text(config.read_text(encoding="utf-8").replace("花木派出所", "花木派出所二"), encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        await _read_until(process.stdout, r"config version \w+ live \(was", seen)
        process.send_signal(signal.SIGTERM)
        await _read_until(process.stdout, r"stopped", seen)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert not any("Traceback" in line for line in seen), "".join(seen)
