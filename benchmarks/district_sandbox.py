"""The district benchmark's sandbox, in its own process: serves a generated world and plays its residents.

    python benchmarks/district_sandbox.py --world RUN/world.json --token TOKEN [--seed 1]

Started by ``benchmarks/district.py``; not meant to be run by hand. It

* builds the world (``parse_world`` on the JSON the driver wrote) and serves it with the project's
  :class:`bot.sandbox.Sandbox` (puppet service on 127.0.0.1, any free port; the web chat too, unused);
* prints one JSON line when ready: ``{"endpoint", "control", "pid", "contacts", "rooms", "build_s"}``;
* answers a control channel of its own: JSON lines over TCP on 127.0.0.1 (``"control"`` port), one request
  at a time, each answered with one line (see :meth:`Runner.handle`);
* injects residents' messages with ``Sandbox.say`` in this process (Poisson arrivals at a given rate, or a
  flood of N at once), and notes when each report was emitted and when the bot's group reply that mentions
  its author arrives (the bot answers a report with an @-mention of the resident), both on this process's
  monotonic clock;
* exits when its stdin closes (the driver went away), on SIGTERM/SIGINT, or on ``{"op": "quit"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from district_traffic import Residents  # noqa: E402

from bot.sandbox import Sandbox, parse_world  # noqa: E402


@dataclass
class Pending:
    message_id: str
    tag: str
    at: float  # perf_counter when emitted
    wall: float


class Runner:
    def __init__(self, sandbox: Sandbox, residents: Residents, seed: int) -> None:
        self.sandbox = sandbox
        self.residents = residents
        self.rng = random.Random(seed + 1)
        self.bot_id = sandbox.world.bot.id
        self.tag = "idle"
        self.seq = 0
        self.pending: dict[tuple[str, str], Pending] = {}
        self.samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        self.gc_pauses: list[float] = []
        self._census: list[tuple[str, str]] | None = None
        self._gc_started = 0.0
        gc.callbacks.append(self._gc)
        original = sandbox.log.append

        async def append(**fields: Any) -> dict[str, Any]:
            arrived, wall = time.perf_counter(), time.time()
            entry = await original(**fields)
            if fields["sender"].id == self.bot_id:
                self._bot_said(entry, arrived, wall)
            return entry

        sandbox.log.append = append  # type: ignore[method-assign]  # the log the puppet service writes to

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif info.get("generation") == 2:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)

    def _bot_said(self, entry: dict[str, Any], arrived: float, wall: float) -> None:
        counts = self.counts[self.tag]
        if entry["room"] is None:
            counts["bot_private"] += 1
            return
        counts["bot_group"] += 1
        mentions = entry["mentions"]
        pending = self.pending.pop((entry["room"], mentions[0]), None) if mentions else None
        if pending is None:
            counts["bot_group_unmatched"] += 1  # a reply to a false positive, or not a reply to a report
            return
        self.samples[pending.tag].append(
            {
                "message_id": pending.message_id,
                "reply_id": entry["id"],
                "latency": arrived - pending.at,
                "emitted_wall": pending.wall,
                "arrived_wall": wall,
            }
        )

    async def _emit(self, tag: str, who: tuple[str, str] | None = None) -> None:
        now = time.perf_counter()
        said = self.residents.chat_from(*who, now) if who else self.residents.next(now, self.pending)
        self.seq += 1
        message_id = f"{tag}-{self.seq:07d}"
        await self.sandbox.say(said.sender, said.text, room=said.room, message_id=message_id)
        if said.kind == "report":
            self.pending[(said.room, said.sender)] = Pending(
                message_id, tag, time.perf_counter(), time.time()
            )
        self.counts[tag][said.kind] += 1
        self.counts[tag]["emitted"] += 1

    async def load(self, tag: str, rate: float, seconds: float) -> dict[str, Any]:
        """Poisson arrivals at ``rate`` messages/s for ``seconds``; late arrivals are caught up at once."""
        self.tag = tag
        start = time.perf_counter()
        wall = time.time()
        end = start + seconds
        due = start + self.rng.expovariate(rate)
        worst_lag = 0.0
        lags: list[float] = []
        while due < end:
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            while due < end and due <= (now := time.perf_counter()):
                lag = now - due
                lags.append(lag)
                worst_lag = max(worst_lag, lag)
                await self._emit(tag)
                due += self.rng.expovariate(rate)
        finished = time.perf_counter()
        emitted = self.counts[tag]["emitted"]
        lags.sort()
        return {
            "tag": tag,
            "emitted": emitted,
            "counts": dict(self.counts[tag]),
            "start_wall": wall,
            "end_wall": wall + (finished - start),
            "seconds": finished - start,
            "offered_rate": emitted / (finished - start) if finished > start else 0.0,
            "lag_p99_ms": 1000 * lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
            "lag_max_ms": 1000 * worst_lag,
        }

    async def flood(self, tag: str, count: int) -> dict[str, Any]:
        """``count`` messages queued back to back, without yielding to the event stream in between."""
        self.tag = tag
        start, wall = time.perf_counter(), time.time()
        for _ in range(count):
            await self._emit(tag)
        finished = time.perf_counter()
        return {
            "tag": tag,
            "emitted": self.counts[tag]["emitted"],
            "counts": dict(self.counts[tag]),
            "start_wall": wall,
            "end_wall": wall + (finished - start),
            "emit_seconds": finished - start,
        }

    async def census(self, tag: str, count: int) -> dict[str, Any]:
        """The next ``count`` residents of the census (everyone once, shuffled) each say something, queued at
        once. ``left`` in the answer: how many have not spoken yet."""
        if self._census is None:
            self._census = self.residents.census()
        self.tag = tag
        start, wall = time.perf_counter(), time.time()
        batch, self._census = self._census[:count], self._census[count:]
        for who in batch:
            await self._emit(tag, who)
        finished = time.perf_counter()
        return {
            "tag": tag,
            "emitted": len(batch),
            "total_emitted": self.counts[tag]["emitted"],
            "left": len(self._census),
            "counts": dict(self.counts[tag]),
            "start_wall": wall,
            "end_wall": wall + (finished - start),
            "emit_seconds": finished - start,
        }

    def results(self, tag: str) -> dict[str, Any]:
        waiting = [p for p in self.pending.values() if p.tag == tag]
        return {
            "tag": tag,
            "samples": self.samples.get(tag, []),
            "unanswered": len(waiting),
            "counts": dict(self.counts.get(tag, {})),
        }

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "wait_connected":
            await self.sandbox.wait_connected(float(request.get("timeout", 30)))
            return {"connected": True}
        if op == "status":
            return {
                "connected": self.sandbox.connected,
                "streams": self.sandbox.puppet.stream_count,
                "log_seq": self.sandbox.log.last_seq,
                "pending_reports": len(self.pending),
                "gc2_pauses": len(self.gc_pauses),
                "gc2_max_ms": 1000 * max(self.gc_pauses, default=0.0),
            }
        if op == "load":
            return await self.load(str(request["tag"]), float(request["rate"]), float(request["seconds"]))
        if op == "flood":
            return await self.flood(str(request["tag"]), int(request["count"]))
        if op == "census":
            return await self.census(str(request["tag"]), int(request["count"]))
        if op == "census_reset":
            self._census = None
            return {}
        if op == "results":
            return self.results(str(request["tag"]))
        if op == "quit":
            return {}
        if op == "idle":
            self.tag = str(request.get("tag", "idle"))
            return {}
        raise ValueError(f"unknown op {op!r}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", required=True, type=Path)
    parser.add_argument("--token", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report-share", type=float, default=0.02)
    parser.add_argument("--negative-share", type=float, default=0.08)
    args = parser.parse_args()

    began = time.perf_counter()
    world = parse_world(json.loads(args.world.read_text(encoding="utf-8")), source=str(args.world))
    residents = {
        room.id: [m for m in room.members if world.contact(m).role == "resident"] for room in world.rooms
    }
    traffic = Residents(residents, args.seed, args.report_share, args.negative_share)
    sandbox = Sandbox(world, token=args.token, host="127.0.0.1")
    await sandbox.start()
    gc.collect()
    gc.freeze()  # the world is long-lived: keep it out of every later full collection
    runner = Runner(sandbox, traffic, args.seed)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            request = json.loads(line)
            try:
                answer = {"ok": True, **await runner.handle(request)}
            except Exception as exc:  # report it to the driver, keep serving
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            writer.write((json.dumps(answer, ensure_ascii=False) + "\n").encode())
            await writer.drain()
            if request.get("op") == "quit":
                stop.set()
        writer.close()

    control = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = control.sockets[0].getsockname()[1]

    async def watch_stdin() -> None:  # the driver holds our stdin: EOF means it is gone
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.read(1024):
            pass
        stop.set()

    watcher = asyncio.create_task(watch_stdin())
    print(
        json.dumps(
            {
                "endpoint": sandbox.endpoint,
                "control": port,
                "pid": os.getpid(),
                "contacts": len(world.contacts),
                "rooms": len(world.rooms),
                "build_s": round(time.perf_counter() - began, 2),
            }
        ),
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        control.close()
        await sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
