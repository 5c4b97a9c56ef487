"""The payload helper (``intake.payload_helper``): message payloads fetched by a child process over its own
gRPC channel to the sandbox, with the bot's own process as the fallback whenever the helper cannot answer."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from bot import connection as connection_module
from bot.connection import AUTO_ENGAGE_LOADS, AUTO_HOLD_SECONDS, AUTO_SUSTAIN_SECONDS, Connection, _wire_kind
from bot.payload_helper import HelperUnavailable, PayloadHelper
from models.tables import InboundMessage
from tests.conftest import JINXIU, WANG, Env, with_payload_helper, write_config
from tests.test_fault_processes import START_TIMEOUT, TOKEN, Child, bot_says, say, start_sandbox


async def until(helper: PayloadHelper, condition: Callable[[], bool], timeout: float = 15) -> None:
    """Wait until ``condition`` holds, looking again each time a helper starts or ends."""
    async def watch() -> None:
        while True:
            helper.changed.clear()
            if condition():
                return
            await helper.changed.wait()

    await asyncio.wait_for(watch(), timeout)


@pytest.fixture
def default_config_text() -> str:
    return with_payload_helper((Path(__file__).parents[1] / "config.yaml").read_text(encoding="utf-8"))


def connection(env: Env) -> Connection:
    assert env.app.connection is not None
    return env.app.connection


async def running_helper(env: Env) -> PayloadHelper:
    """The bot's helper, started and answering (the first load starts it; loads go in-process meanwhile)."""
    message_id = await env.sandbox.say("wxid_res_02", "早上好", room=JINXIU)
    await env.outcome_of(message_id)  # handled: its load created the helper and started it
    helper = connection(env).payload_helper
    assert helper is not None
    await until(helper, lambda: helper.running)
    return helper


async def test_reports_load_through_the_helper(env: Env) -> None:
    helper = await running_helper(env)
    answered, fallbacks = helper.answered, connection(env).helper_fallbacks
    start = env.sandbox.log.last_seq
    message_id = await env.sandbox.say("wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)
    assert await env.outcome_of(message_id) == "incident:fire"
    reply = await env.bot_says(JINXIU, start, "119")
    assert reply["mentions"] == ["wxid_res_01"]  # the sender, room and mentions came through the helper
    await env.bot_says(WANG, start, "烟焦味")
    assert helper.answered > answered and helper.failed == 0
    assert connection(env).helper_fallbacks == fallbacks  # nothing was loaded in the bot's process
    [incident] = await env.incidents()
    assert incident.reporter_name == "张阿姨" and incident.group_name == "锦绣小区平安群"


async def test_health_and_metrics_show_the_helper(env: Env) -> None:
    helper = await running_helper(env)
    message_id = await env.sandbox.say("wxid_res_03", "今晚吃火锅吗", room=JINXIU)
    assert await env.outcome_of(message_id) == "quiet"
    assert env.app.web is not None
    async with aiohttp.ClientSession(env.app.web.url) as http:
        async with http.get("/healthz") as response:
            assert (await response.json())["payload_helper"] == "running"
        async with http.get("/metrics") as response:
            exposed = {sample.name: sample.value for family in text_string_to_metric_families(
                await response.text()) for sample in family.samples}
        assert exposed["gonghao_payload_helper_running"] == 1
        assert exposed["gonghao_payload_helper_loads"] == helper.answered >= 1
        assert exposed["gonghao_payload_helper_fallbacks"] == connection(env).helper_fallbacks >= 1  # the first
        helper.restart_after = 3600.0
        assert helper.pid is not None
        os.kill(helper.pid, signal.SIGKILL)
        await until(helper, lambda: not helper.running)
        async with http.get("/healthz") as response:
            assert (await response.json())["payload_helper"] == "down"


async def test_hostile_texts_cross_the_helpers_pipe_intact(env: Env) -> None:
    """One line of JSON per payload: newlines, control characters, emoji and 100 KB of text must neither
    break the framing nor change the text."""
    helper = await running_helper(env)
    answered, fallbacks = helper.answered, connection(env).helper_fallbacks
    texts = ["第一行\n第二行\r\n\"引号\" \\ 楼道着火了", "\x07\x1b[31m楼道\u202e着火\ufeff了 🔥🧯", "火" * 100_000]
    outcomes = []
    for number, text in enumerate(texts):
        message_id = await env.sandbox.say(f"wxid_res_0{number + 1}", text, room=JINXIU)
        outcomes.append(await env.outcome_of(message_id))
    assert outcomes[0] == "incident:fire" and outcomes[1] == "incident:joined:fire"  # the same fire, joined
    assert outcomes[2] not in ("error", "duplicate", "duplicate_text")
    assert helper.answered >= answered + 3 and connection(env).helper_fallbacks == fallbacks
    assert env.app.station is not None
    async with env.app.station.db.session() as session:
        stored = (await session.scalars(select(InboundMessage.text).where(InboundMessage.text.in_(texts)))).all()
    assert sorted(stored) == sorted(texts)


async def test_the_token_is_not_on_the_helpers_command_line(env: Env) -> None:
    helper = await running_helper(env)
    pid = helper.pid
    command_line = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert "bot.payload_helper" in command_line and env.sandbox.token not in command_line


async def test_message_types_are_mapped_as_python_wechaty_maps_them(env: Env) -> None:
    helper = await running_helper(env)
    message_id = await env.sandbox.say("wxid_res_01", "[图片]", room=JINXIU)
    # The sandbox only says text: make this one an image (Node numbering: Image = 6) before it is fetched.
    env.sandbox.log._by_id[message_id]["type"] = 6
    assert await env.outcome_of(message_id) == "not_text"
    assert helper.answered >= 1
    assert [_wire_kind(n) for n in (7, 6, 2, 15, 0, 99)] == ["text", "image", "audio", "video", "other", "other"]


async def test_a_killed_helper_loses_nothing_and_is_started_again(env: Env) -> None:
    helper = await running_helper(env)
    helper.restart_after = 0.0
    first_pid = helper.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)
    await until(helper, lambda: not helper.running)
    fallbacks = connection(env).helper_fallbacks
    start = env.sandbox.log.last_seq
    message_id = await env.sandbox.say("wxid_res_01", "楼道着火了", room=JINXIU)
    assert await env.outcome_of(message_id) == "incident:fire"
    assert connection(env).helper_fallbacks > fallbacks  # loaded in the bot's process
    await env.bot_says(JINXIU, start, "119")
    await until(helper, lambda: helper.running)  # that load asked for a new helper
    assert helper.pid != first_pid and helper.starts == 2
    answered, fallbacks = helper.answered, connection(env).helper_fallbacks
    message_id = await env.sandbox.say("wxid_res_03", "今晚吃火锅吗", room=JINXIU)
    assert await env.outcome_of(message_id) == "quiet"
    assert helper.answered > answered and connection(env).helper_fallbacks == fallbacks


async def test_a_hung_helper_is_ended_and_its_loads_made_in_process(env: Env) -> None:
    helper = await running_helper(env)
    helper.answer_timeout = 0.5
    helper.restart_after = 3600.0  # stay on the fallback for the rest of the test
    assert helper.pid is not None
    os.kill(helper.pid, signal.SIGSTOP)  # alive, answering nothing
    fallbacks = connection(env).helper_fallbacks
    start = env.sandbox.log.last_seq
    message_id = await env.sandbox.say("wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)
    assert await env.outcome_of(message_id) == "incident:fire"
    await env.bot_says(JINXIU, start, "119")
    assert not helper.running and helper.failed >= 1 and connection(env).helper_fallbacks > fallbacks


async def test_a_helper_that_cannot_reach_the_service_hands_loads_back(env: Env) -> None:
    helper = await running_helper(env)
    helper.endpoint = "127.0.0.1:1"  # its next start connects nowhere
    helper.restart_after = 0.0
    assert helper.pid is not None
    os.kill(helper.pid, signal.SIGKILL)
    await until(helper, lambda: not helper.running)
    await env.sandbox.say("wxid_res_02", "早", room=JINXIU)  # loaded in-process; starts the new helper
    await until(helper, lambda: helper.running)
    failed = helper.failed
    message_id = await env.sandbox.say("wxid_res_01", "楼道着火了", room=JINXIU)
    assert await env.outcome_of(message_id) == "incident:fire"
    assert helper.failed == failed + 1  # the helper's call failed; the bot's own succeeded


async def test_a_config_reload_turns_the_helper_off_and_on(env: Env) -> None:
    helper = await running_helper(env)
    assert env.app.connection is not None
    text = env.config_path.read_text(encoding="utf-8")
    env.config_path.write_text(with_payload_helper(text, on=False), encoding="utf-8")
    assert env.app.reload() == []
    message_id = await env.sandbox.say("wxid_res_03", "今晚吃火锅吗", room=JINXIU)
    assert await env.outcome_of(message_id) == "quiet"
    assert env.app.connection.payload_helper is None and not helper.running
    env.config_path.write_text(text, encoding="utf-8")
    assert env.app.reload() == []
    again = await running_helper(env)
    assert again is not helper


async def test_stopping_the_bot_ends_the_helper(env: Env) -> None:
    helper = await running_helper(env)
    pid = helper.pid
    assert pid is not None
    await env.app.stop()
    assert not helper.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def process_exit(pid: int, timeout: float) -> None:
    """Wait until process ``pid`` (not our child) has exited: its pidfd becomes readable then."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # gone already
        return
    exited = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, exited.set)
    try:
        await asyncio.wait_for(exited.wait(), timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def test_the_helper_does_not_outlive_a_killed_bot(tmp_path: Path, default_config_text: str) -> None:
    """kill -9 of the bot process: its helper sees the end of its input and exits, leaving nothing behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECHATY_")}
    env["WECHATY_PUPPET_SERVICE_TOKEN"] = TOKEN
    config = write_config(tmp_path, default_config_text)
    children: list[Child] = []
    try:
        sandbox, endpoint, web_url = await start_sandbox(tmp_path, env, 0, 0, "sandbox")
        children.append(sandbox)
        bot = await Child.start("bot", ["--config", str(config)], cwd=tmp_path,
                                env={**env, "WECHATY_PUPPET_SERVICE_ENDPOINT": endpoint})
        children.append(bot)
        await bot.wait_line(r"logged in and listening", timeout=START_TIMEOUT)
        async with aiohttp.ClientSession(web_url) as http:
            await say(http, "wxid_res_02", "早上好", room=JINXIU)  # the first load starts the helper
            started = await bot.wait_line(r"payload helper started \(pid (\d+)\)", timeout=START_TIMEOUT)
            await say(http, "wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)
            assert "119" in (await bot_says(http, JINXIU, "119"))["text"]
        helper_pid = int(started.group(1))
        assert await bot.stop(signal.SIGKILL) == -signal.SIGKILL  # returns once the output ends: the helper
        await process_exit(helper_pid, START_TIMEOUT)                # held the bot's stderr until it exited
        assert "Traceback" not in bot.output and "payload helper: " not in bot.output  # it exited quietly
    finally:
        for child in children:
            await child.stop()


async def test_a_helper_that_dies_at_start_is_tried_ever_less_often(env: Env) -> None:
    """A helper that cannot even start (here: an endpoint it cannot parse) exits at once, again and again:
    each restart waits twice as long as the last, and every message is loaded in the bot's process."""
    helper = await running_helper(env)
    helper.endpoint = "no-port-here"
    helper.restart_after = 0.001
    assert helper.pid is not None
    os.kill(helper.pid, signal.SIGKILL)
    await until(helper, lambda: not helper.running)
    for number in range(3):  # each load while none runs may start one; each of those dies at once
        deaths = helper.quick_deaths
        message_id = await env.sandbox.say("wxid_res_03", f"今晚吃火锅吗 {number}", room=JINXIU)
        assert await env.outcome_of(message_id) == "quiet"
        await until(helper, lambda: helper.quick_deaths > deaths and not helper.running)  # noqa: B023
    assert helper.quick_deaths >= 4 and helper.restart_delay == 0.001 * 2 ** helper.quick_deaths
    assert connection(env).helper_fallbacks >= 3


async def test_the_helper_keeps_the_token_out_of_the_errors_it_reports(env: Env) -> None:
    """The bot logs why a helper load failed; a service error that quotes the token must not carry it there."""
    helper = await running_helper(env)
    with pytest.raises(HelperUnavailable) as raised:  # the sandbox answers "unknown message '<the id>'"
        await helper.load(env.sandbox.token)
    assert "NOT_FOUND" in str(raised.value) and "***" in str(raised.value)
    assert env.sandbox.token not in str(raised.value)


def _connection(mode: str, cores: int = 2) -> tuple[Connection, list[float]]:
    """A Connection that has not connected, its mode and core count fixed, on a clock the test moves."""
    async def ignore(_: Any) -> None:
        return None

    conn = Connection(account="huamu", token="t", endpoint="127.0.0.1:1", cache_dir=Path("."),
                      on_inbound=ignore, payload_helper_mode=lambda: mode)
    conn.cores = cores
    now = [1000.0]
    conn.monotonic = lambda: now[0]
    return conn, now


async def test_auto_takes_the_helper_only_while_loads_queue_up_and_for_a_while_after() -> None:
    conn, now = _connection("auto")
    assert not conn.helper_wanted() and conn.helper_state == "standby"
    conn._loads_in_flight = AUTO_ENGAGE_LOADS - 1
    assert not conn.helper_wanted()  # busy, not queueing
    conn._pending.put_nowait(object())  # one more event waiting for a loader: loads queue up ...
    assert not conn.helper_wanted()  # ... but a burst is not enough
    now[0] += AUTO_SUSTAIN_SECONDS - 0.1
    assert not conn.helper_wanted()
    now[0] += 0.1
    assert conn.helper_wanted() and conn.helper_engaged and conn.helper_engagements == 1  # still queueing
    assert conn.helper_state == "down"  # engaged, helper not started: loads are made here meanwhile
    conn._loads_in_flight = 0
    conn._pending.get_nowait()  # the queue is gone ...
    now[0] += AUTO_HOLD_SECONDS - 0.1
    assert conn.helper_wanted()  # ... but the helper keeps the loads for a while: no flapping
    now[0] += 0.1
    assert not conn.helper_wanted() and conn.helper_state == "standby"
    conn._loads_in_flight = AUTO_ENGAGE_LOADS  # queueing again, with a break in between ...
    assert not conn.helper_wanted()
    conn._loads_in_flight = 0
    now[0] += AUTO_SUSTAIN_SECONDS
    assert not conn.helper_wanted()  # a load that saw no queue
    conn._loads_in_flight = AUTO_ENGAGE_LOADS
    assert not conn.helper_wanted()  # ... counts from the end of the break
    now[0] += AUTO_SUSTAIN_SECONDS
    assert conn.helper_wanted() and conn.helper_engagements == 2


@pytest.mark.parametrize(("mode", "cores", "wanted", "state"), [
    ("on", 2, True, "down"), ("on", 1, True, "down"),  # on means on, even on one core
    ("off", 2, False, "off"), ("auto", 1, False, "off"),  # a helper on the bot's only core: never
])
async def test_the_helper_mode_when_loads_queue_up(mode: str, cores: int, wanted: bool, state: str) -> None:
    conn, _ = _connection(mode, cores)
    conn._loads_in_flight = 10 * AUTO_ENGAGE_LOADS
    assert conn.helper_wanted() == wanted and conn.helper_state == state


async def test_auto_loads_through_the_running_helper_while_engaged_then_in_process(
    env: Env, monkeypatch: pytest.MonkeyPatch,
) -> None:
    helper = await running_helper(env)
    conn = connection(env)
    now = [conn.monotonic()]
    monkeypatch.setattr(conn, "monotonic", lambda: now[0])
    text = env.config_path.read_text(encoding="utf-8")
    env.config_path.write_text(with_payload_helper(text, on="auto"), encoding="utf-8")
    assert env.app.reload() == []

    async def loaded_by_helper(text: str, outcome: str) -> bool:
        answered = helper.answered
        message_id = await env.sandbox.say("wxid_res_01", text, room=JINXIU)
        assert await env.outcome_of(message_id) == outcome
        return helper.answered == answered + 1

    assert not await loaded_by_helper("今晚吃火锅吗", "quiet")  # nothing queues: loaded here
    assert helper.running and conn.helper_state == "standby"  # the idle helper is kept for the next queue
    monkeypatch.setattr(connection_module, "AUTO_ENGAGE_LOADS", 1)  # the load itself is a queue now ...
    monkeypatch.setattr(connection_module, "AUTO_SUSTAIN_SECONDS", 0.0)  # ... and long enough
    assert await loaded_by_helper("周末去公园散步", "quiet")  # chit-chat: no replies whose echoes load too
    assert conn.helper_engaged and conn.helper_state == "running"
    monkeypatch.setattr(connection_module, "AUTO_ENGAGE_LOADS", 10_000)  # no queue any more
    assert await loaded_by_helper("大家早上好呀", "quiet")  # held for AUTO_HOLD_SECONDS after the last queue
    now[0] += connection_module.AUTO_HOLD_SECONDS
    assert not await loaded_by_helper("收到谢谢", "quiet")
    assert conn.helper_state == "standby" and helper.running
