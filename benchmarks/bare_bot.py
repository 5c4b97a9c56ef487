"""A bare python-wechaty bot that only counts messages: the ceiling of the district benchmark.

    WECHATY_PUPPET_SERVICE_TOKEN=... WECHATY_PUPPET_SERVICE_ENDPOINT=127.0.0.1:PORT \
        python benchmarks/bare_bot.py [--cache-dir DIR]

The same connection path as the station's bot (``bot/connection.py``): PyPI ``wechaty`` 0.10.7 loaded
through ``bot.wechaty_compat.load_wechaty``, driven the same way (``init_puppet``, ``isolate_bot``, the event
bridge, ``puppet.start()``), so each message costs what python-wechaty makes it cost (the event, then
``Message.ready()``: the message payload, the talker's and the room's payloads the first time they are
seen) and nothing else: no storage, no routing, no replies.

Prints JSON lines on stdout: ``{"event": "login", "wall": ...}`` once logged in, then every 0.1 s while the
count changes ``{"n": messages so far, "last_wall": when the last one arrived}``. Exits on SIGTERM/SIGINT
(and, with ``--exit-on-stdin-eof``, when stdin closes: the driver went away).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.wechaty_compat import isolate_bot, load_wechaty, register_secret  # noqa: E402


def bound(puppet: Any, limit: int) -> None:
    """Wrap python-wechaty's message listener so that at most ``limit`` run at once."""
    gate = asyncio.Semaphore(limit)
    emitter = puppet._event_stream
    for listener in emitter.listeners("message"):
        emitter.remove_listener("message", listener)

        async def gated(payload: Any, listener: Any = listener) -> None:
            async with gate:
                await listener(payload)

        emitter.on("message", gated)


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=Path("data") / ".wechaty-bare")
    parser.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="stop when stdin closes (the driver)"
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=0,
        help="an experiment: at most this many messages loading at once (python-wechaty starts one task per "
        "event, each with its own gRPC calls, however many are queued); 0 = as python-wechaty does",
    )
    args = parser.parse_args()
    token = os.environ.get("WECHATY_PUPPET_SERVICE_TOKEN", "")
    endpoint = os.environ.get("WECHATY_PUPPET_SERVICE_ENDPOINT", "")
    if not token or not endpoint:
        print("set WECHATY_PUPPET_SERVICE_TOKEN and WECHATY_PUPPET_SERVICE_ENDPOINT", file=sys.stderr)
        return 2
    register_secret(token)
    wechaty = load_wechaty(args.cache_dir)
    from wechaty_puppet import PuppetOptions

    count = {"n": 0, "last": 0.0}
    stop = asyncio.Event()

    class CountingBot(wechaty.Wechaty):  # type: ignore[misc,name-defined]
        async def on_login(self, contact: Any) -> None:
            say(event="login", wall=time.time(), id=contact.contact_id)

        async def on_message(self, msg: Any) -> None:
            count["n"] += 1
            count["last"] = time.time()

    bot = CountingBot(
        wechaty.WechatyOptions(
            puppet="wechaty-puppet-service", puppet_options=PuppetOptions(token=token, end_point=endpoint)
        )
    )
    await bot.init_puppet()
    isolate_bot(bot)
    await bot.init_puppet_event_bridge(bot.puppet)
    if args.max_in_flight:
        bound(bot.puppet, args.max_in_flight)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def report() -> None:
        shown = -1
        while True:
            if count["n"] != shown:
                shown = count["n"]
                say(n=shown, last_wall=count["last"])
            await asyncio.sleep(0.1)

    async def watch_stdin() -> None:
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.read(1024):
            pass
        stop.set()

    tasks = [asyncio.create_task(bot.puppet.start()), asyncio.create_task(report())]
    if args.exit_on_stdin_eof:
        tasks.append(asyncio.create_task(watch_stdin()))
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([tasks[0], stopper], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if tasks[0] in done and tasks[0].exception() is not None:
        print(f"bare bot: puppet ended: {tasks[0].exception()!r}", file=sys.stderr)
        code = 1
    for task in [*tasks, stopper]:
        task.cancel()
    puppet = bot.puppet
    if getattr(puppet, "channel", None) is not None:
        puppet.channel.close()
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
