"""The storage and routing half of the district benchmark alone: ``handlers.pipeline.handle_batch``
in-process, without gRPC or python-wechaty, to show what the database layer costs per message.

    python benchmarks/district_pipeline.py [--messages 3000] [--batches 1,16,64,256] [--preload 0,100000] \
        [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test]

Same generated station as ``district.py`` (100 groups, the default config with pacing off) and the same
traffic (2% reports, 8% labelled negatives, the rest chit-chat). For each database, preload and batch
size, ``--messages`` messages go through ``pipeline.handle_batch`` in batches of that size, one batch at a
time, as the bot's intake does (``bot/app.py``: whatever waits goes in one transaction, at most 256); it
reports messages/s and the time per batch p50/p99 (with ``--pressing-only``, of the generated messages
only the reports, questions and commands, which go through the ORM: ~3% of the traffic). ``--preload N``
first stores N old messages (days of traffic) so that the per-batch duplicate-text query runs against a
full table. With ``--postgres`` every run also goes to a scratch schema of that database (dropped
afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import district_world  # noqa: E402
from district_traffic import Residents  # noqa: E402
from sqlalchemy import event, insert, text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from bot.config.loader import load_config  # noqa: E402
from handlers import pipeline  # noqa: E402
from handlers.inbound import Inbound  # noqa: E402
from handlers.runtime import ConfigVersion, Station  # noqa: E402
from models.db import Database  # noqa: E402
from models.migrate import ensure_current  # noqa: E402
from models.tables import InboundMessage  # noqa: E402


async def preload(database: Database, account: str, rooms: dict[str, list[str]], count: int) -> None:
    """``count`` old chat messages straight into inbound_messages."""
    old = datetime.now(UTC) - timedelta(days=3)
    room_ids = list(rooms)
    for start in range(0, count, 5000):
        rows = []
        for i in range(start, min(count, start + 5000)):
            room = room_ids[i % len(room_ids)]
            members = rooms[room]
            at = old + timedelta(seconds=i)
            rows.append({"account": account, "message_id": f"old-{i:08d}", "room_id": room, "group_id": None,
                         "sender_id": members[i % len(members)], "sender_name": "邻居", "text": f"旧消息 {i}",
                         "kind": "text", "sent_at": at, "received_at": at, "outcome": "quiet"})
        async with database.session() as session, session.begin():
            await session.execute(insert(InboundMessage), rows)


async def run(url: str, schema: str | None, config_path: Path, rooms: dict[str, list[str]],
              batch_size: int, preloaded: int, args: argparse.Namespace) -> dict[str, Any]:
    database = Database(url, schema=schema)
    config = load_config(config_path)
    await ensure_current(database)
    station = Station(ConfigVersion.build(config, config_path.read_text(encoding="utf-8")), database)
    await preload(database, config.station.id, rooms, preloaded)
    traffic = Residents({k: list(v) for k, v in rooms.items()}, args.seed, 0.02, 0.08)
    now = datetime.now(UTC)
    inbounds = []
    for i in range(args.messages):
        said = traffic.next(time.perf_counter(), set())
        inbounds.append(Inbound(account=config.station.id, message_id=f"b{batch_size}-{i:07d}",
                                sender_id=said.sender, sender_name="居民", room_id=said.room, room_topic=None,
                                text=said.text, kind="text", mentions=(), mentions_bot=False,
                                sent_at=now + timedelta(milliseconds=i)))
    if args.pressing_only:  # reports, questions and commands alone: the path through the ORM
        inbounds = [m for m in inbounds if pipeline.prepare(station, m).pressing]
    statements: collections.Counter[str] = collections.Counter()

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements[" ".join(statement.split())[:100]] += 1

    event.listen(database.engine.sync_engine, "before_cursor_execute", count)
    times: list[float] = []
    cpu_began, began = time.process_time(), time.perf_counter()
    for start in range(0, len(inbounds), batch_size):
        batch_began = time.perf_counter()
        await pipeline.handle_batch(station, inbounds[start:start + batch_size])
        times.append(time.perf_counter() - batch_began)
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    event.remove(database.engine.sync_engine, "before_cursor_execute", count)
    await database.close()
    if args.statements:
        print(f"statements through SQLAlchemy, {batch_size} per batch, per message:")
        for statement, n in statements.most_common():
            print(f"  {n / len(inbounds):6.2f}  {statement}")
    times.sort()
    return {"messages": len(inbounds), "rate": len(inbounds) / elapsed, "cpu_ms": 1000 * cpu / len(inbounds),
            "p50_ms": 1000 * times[len(times) // 2], "p99_ms": 1000 * times[int(0.99 * (len(times) - 1))]}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--members", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--preload", type=lambda s: [int(x) for x in s.split(",")], default=[0, 100000])
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64, 256])
    parser.add_argument("--postgres", help="also measure on this PostgreSQL URL (a scratch schema)")
    parser.add_argument("--statements", action="store_true",
                        help="list the SQL statements sent through SQLAlchemy, per message (quiet batches on "
                             "SQLite bypass it: see models/message_store.py)")
    parser.add_argument("--pressing-only", action="store_true",
                        help="of the --messages generated, keep only reports, questions and commands")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="gonghao-pipeline-"))
    try:
        world, config = district_world.build(args.groups, args.members, args.members, args.seed)
        config_path = district_world.write_config(config, directory)
        rooms = {room["id"]: [m for m in room["members"] if m.startswith("wxid_d")] for room in world["rooms"]}
        print("| database | stored before | batch | msg/s | CPU per message | batch p50 / p99 |")
        print("|---|---|---|---|---|---|")
        for preloaded in args.preload:
            for batch_size in args.batches:
                targets: list[tuple[str, str, str | None]] = [
                    ("SQLite", f"sqlite+aiosqlite:///{directory}/run-{preloaded}-{batch_size}.db", None)]
                if args.postgres:
                    targets.append(("PostgreSQL", args.postgres, f"bench_{preloaded}_{batch_size}"))
                for name, url, schema in targets:
                    if schema:
                        await _schema(args.postgres, schema, create=True)
                    try:
                        result = await run(url, schema, config_path, rooms, batch_size, preloaded, args)
                    finally:
                        if schema:
                            await _schema(args.postgres, schema, create=False)
                    print(f"| {name} | {preloaded:,} | {batch_size} | {result['rate']:,.0f} | "
                          f"{result['cpu_ms']:.2f} ms | {result['p50_ms']:.1f} / {result['p99_ms']:.1f} ms |",
                          flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


async def _schema(url: str, schema: str, *, create: bool) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            if create:
                await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    finally:
        await engine.dispose()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
