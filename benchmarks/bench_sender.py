"""The outbox sender's own cost: CPU per row of ``bot.sender.drain_once``, without gRPC.

    python benchmarks/bench_sender.py [--rounds 600] [--rows 3] [--postgres URL]

A station like the district benchmark's (pacing off) on a fresh SQLite file (and, with ``--postgres``, in
a scratch schema of that database); each round commits ``--rows`` urgent rows (a reply to a group and
pings, as one report causes) and runs one ``drain_once`` with a transport that answers at once, so what is
measured is the sender's reads, claims and records. Prints CPU per row and per round (process time, the
median of three passes).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import district_world  # noqa: E402
from sqlalchemy import text  # noqa: E402

from bot import sender  # noqa: E402
from bot.config.loader import load_config  # noqa: E402
from handlers.runtime import ConfigVersion, Station  # noqa: E402
from models import outbox  # noqa: E402
from models.db import Database  # noqa: E402
from models.migrate import ensure_current  # noqa: E402


class Instant:
    """A transport whose sends succeed at once."""

    async def send(self, conversation_id: str, text: str, *, is_room: bool, mentions: list[str]) -> str | None:
        return f"sent-{text}"

    async def is_member(self, room_id: str) -> bool:
        return True


async def one_pass(database: Database, config_path: Path, rounds: int, rows: int) -> float:
    """CPU seconds of ``drain_once`` over ``rounds`` rounds of ``rows`` rows."""
    station = Station(ConfigVersion.build(load_config(config_path), config_path.read_text(encoding="utf-8")),
                      database)
    pacer, transport, spent = sender.Pacer(station), Instant(), 0.0
    for r in range(rounds):
        async with database.session() as session, session.begin():
            for k in range(rows):
                room = k == 0  # the reply in the group, then pings to officers
                outbox.enqueue(session, account=station.id, conversation_id=f"d{r % 100:03d}@chatroom" if room
                               else f"wxid_officer_{k}", is_room=room, text=f"{r}-{k}", now=station.now(),
                               kind="reply" if room else "ping", priority=outbox.PRIORITY_URGENT)
        began = time.process_time()
        assert await sender.drain_once(station, transport, pacer) is None
        spent += time.process_time() - began
    return spent


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=600)
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--postgres", help="also measure on this PostgreSQL URL (a scratch schema)")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="gonghao-sender-"))
    try:
        _world, config = district_world.build(100, 10, 10, 1)
        config_path = district_world.write_config(config, directory)
        targets = [("SQLite", lambda n: Database(f"sqlite+aiosqlite:///{directory}/run-{n}.db"), None)]
        if args.postgres:
            targets.append(("PostgreSQL", lambda n: Database(args.postgres, schema=f"bench_sender_{n}"), "pg"))
        print("| database | rows per round | CPU per row | CPU per round |")
        print("|---|---|---|---|")
        for name, make, postgres in targets:
            passes = []
            for n in range(3):
                tag = f"{uuid.uuid4().hex[:6]}{n}"
                if postgres:
                    await _schema(args.postgres, f"bench_sender_{tag}", create=True)
                database = make(tag)
                try:
                    await ensure_current(database)
                    passes.append(await one_pass(database, config_path, args.rounds, args.rows))
                finally:
                    await database.close()
                    if postgres:
                        await _schema(args.postgres, f"bench_sender_{tag}", create=False)
            spent = statistics.median(passes)
            print(f"| {name} | {args.rows} | {1000 * spent / (args.rounds * args.rows):.2f} ms | "
                  f"{1000 * spent / args.rounds:.2f} ms |", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


async def _schema(url: str, schema: str, *, create: bool) -> None:
    database = Database(url)
    async with database.engine.begin() as connection:
        await connection.execute(text(f'CREATE SCHEMA "{schema}"' if create else f'DROP SCHEMA "{schema}" CASCADE'))
    await database.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
