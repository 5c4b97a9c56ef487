"""On-call through the real bot and sandbox: escalation, results posted to the group, off-duty backfill,
return digests, and a chain that survives `kill -9` of the bot process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

from bot.app import PuppetTarget  # noqa: F401  (documents what the subprocess gets through the environment)
from bot.sandbox import Sandbox, load_world
from tests.conftest import BOT, JINXIU, ROOT, WANG, Env, write_config


def last_seq(env: Env) -> int:
    return env.sandbox.log.last_seq


async def test_unacknowledged_report_escalates_on_the_clock(env: Env) -> None:
    start = last_seq(env)
    await env.sandbox.say("wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)
    await env.bot_says(WANG, start, "警情 #")
    env.clock.current += timedelta(minutes=3)
    env.app.timers_wake.set()
    for officer in ("wxid_officer_li", "wxid_officer_zhao", WANG):
        ping = await env.bot_says(officer, start, "警情升级")
        assert "已3分钟无人确认" in ping["text"]


async def test_officer_result_reaches_the_group(env: Env) -> None:
    start = last_seq(env)
    await env.sandbox.say("wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)
    await env.bot_says(WANG, start, "警情 #")
    await env.sandbox.say(WANG, "收到")
    await env.bot_says(JINXIU, start, "已接警")
    await env.sandbox.say(WANG, "处理完毕 1 是邻居家烧糊了锅，已处理，无危险")
    result = await env.bot_says(JINXIU, start, "处理完毕")
    assert "烧糊了锅" in result["text"] and "王警官" in result["text"]
    await env.bot_says(WANG, start, "已办结警情 #1")
    [incident] = await env.incidents()
    assert incident.status == "resolved" and incident.result == "是邻居家烧糊了锅，已处理，无危险"


async def test_off_duty_backfill_and_return_digest(env: Env) -> None:
    env.clock.set_local("2026-11-28 23:00")  # Saturday night: 王警官 off, 李警官 on the night rotation
    start = last_seq(env)
    await env.sandbox.say("wxid_res_02", "有人拿裸聊视频威胁我转钱", room=JINXIU)
    reply = await env.bot_says(JINXIU, start, "不要转钱")
    assert "本群社区民警王警官当前不在班，已通知李警官" in reply["text"]
    await env.bot_says("wxid_officer_li", start, "警情 #")
    assert env.bot_messages(WANG, start) == []
    env.clock.set_local("2026-11-30 08:31")  # Monday morning: 王警官 is back
    env.app.timers_wake.set()
    digest = await env.bot_says(WANG, start, "离岗期间简报")
    assert "#1" in digest["text"] and "锦绣小区平安群" in digest["text"]


async def test_chain_survives_kill_9_of_the_bot(tmp_path: Path, default_config_text: str) -> None:
    """The bot runs as its own process on a scripted clock (GONGHAO_CLOCK_FILE: a start time that then runs on
    in real time); we kill it with SIGKILL
    between two escalation steps and start it again on the same database."""
    clock_file = tmp_path / "clock.txt"
    clock_file.write_text("2026-11-27T10:00:00+08:00", encoding="utf-8")
    text = default_config_text.replace("tick_seconds: 5", "tick_seconds: 0.2")
    config = write_config(tmp_path, text)
    async with Sandbox(load_world(None), token="restart-test-token-1") as sandbox:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WECHATY_")}
        env.update(WECHATY_PUPPET_SERVICE_TOKEN=sandbox.token, WECHATY_PUPPET_SERVICE_ENDPOINT=sandbox.endpoint,
                   GONGHAO_CLOCK_FILE=str(clock_file))

        async def start_bot() -> asyncio.subprocess.Process:
            process = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "main.py"), "--config", str(config), cwd=tmp_path, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            await sandbox.wait_connected(30)
            return process

        def to_li(after: int) -> list[dict[str, object]]:
            return [m for m in sandbox.messages("wxid_officer_li", after) if m["from"] == BOT]

        bot = await start_bot()
        try:
            await sandbox.say("wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)
            await sandbox.wait_for(WANG, lambda m: m["from"] == BOT and "警情 #" in m["text"], timeout=30)
            clock_file.write_text("2026-11-27T10:04:00+08:00", encoding="utf-8")  # step 1 (3 min) is due
            await sandbox.wait_for("wxid_officer_li", lambda m: "分钟无人确认" in m["text"], timeout=30)
            # The outbox marks each message sent before sending the next: an answer to a later message
            # proves the step's pings are recorded, so the kill lands between the two steps, not mid-send
            # (a kill mid-send is the outbox's concern, tested with the outbox).
            await sandbox.say("wxid_res_05", "你好")
            await sandbox.wait_for("wxid_res_05", lambda m: m["from"] == BOT, timeout=30)
        finally:
            bot.send_signal(signal.SIGKILL)
            await bot.wait()
        assert bot.returncode == -signal.SIGKILL
        clock_file.write_text("2026-11-27T10:14:00+08:00", encoding="utf-8")  # step 2 (13 min) came due while down
        bot = await start_bot()
        try:
            await sandbox.wait_for("wxid_officer_li", lambda m: "（已超时）" in m["text"], timeout=30)
            # and a later message handled after it proves the restarted bot has settled
            await sandbox.say("wxid_res_02", "大家好", room=JINXIU)
            await sandbox.say("wxid_officer_li", "值班")
            await sandbox.wait_for("wxid_officer_li", lambda m: m["from"] == BOT and "在班" in m["text"], timeout=30)
        finally:
            bot.send_signal(signal.SIGTERM)
            await asyncio.wait_for(bot.wait(), 30)
        escalations = [m["text"] for m in to_li(0) if "警情升级" in str(m["text"])]
        assert len(escalations) == 2, escalations  # step 1 once, step 2 once: none skipped, none twice
