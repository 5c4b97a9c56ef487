"""District accounts: several station accounts at once, each with its own puppet service and world.

Run (about a minute for the smoke run; everything on 127.0.0.1; every process it starts is stopped on exit,
also when the driver is interrupted or killed):

    python benchmarks/district_accounts.py --accounts 2 --groups 5 --members-min 20 --members-max 20 \
        --rate 20 --seconds 4                                      # smoke run, one bot process
    python benchmarks/district_accounts.py --accounts 2 --groups 5 --members-min 20 --members-max 20 \
        --rate 20 --seconds 4 --mode per-station                   # one bot process per station
    python benchmarks/district_accounts.py --accounts 3 --groups 1000 --members-min 130 --members-max 130 \
        --rate 300 --seconds 10 --json out.json                    # 3,000 groups across three accounts

Processes:

* one sandbox per account (``benchmarks/district_sandbox.py``, as in ``district.py``): the project's puppet
  service serving that account's generated world (``district_world.build`` with seed + account index; the
  bot, rooms and residents get ids of their own per account, the bot keeps its display name so that the
  residents' "@花木派出所公号" still mentions it) and its residents, on its own port with its own token,
  driven over its own JSON-lines control channel: a real district has one puppet service per station
  account;
* the bot, ``--mode one-process`` (default): ``python main.py --config RUN/district.yaml``, every station in
  one process; ``--mode per-station``: ``python main.py --config RUN/district.yaml --station S``, one process
  per station. The district file lists one config per station (``RUN/stNN/config.yaml``: ``config.yaml``
  with the generated groups, the admin web off, sending pacing off, and a ``puppet:`` section naming the
  environment variable that holds the station's token). A district shares one database (the district
  file's ``database`` wins over the stations'): in one process a SQLite file in the run directory; one
  process per station needs PostgreSQL (several processes writing one SQLite file queue on its write lock in
  SQLite's sleeping busy handler), so a fresh database ``bench_accounts_<hex>`` is created on
  ``--database-url``'s server and dropped at the end. The schema is created before the bots start
  (``main.py db upgrade``): processes starting together on an empty database would race to create it.

What it measures:

* start-up: bot process start to every station's "logged in as" line; RSS (VmRSS) of every bot process
  after login and at the end, and its peak (VmHWM);
* a warm-up (``--warmup-rate`` for ``--warmup-seconds``), then a steady phase: the residents talk at
  ``--rate`` msg/s in total for ``--seconds``, split evenly across the accounts, Poisson arrivals, the traffic
  mix of ``district.py`` (2% reports, 8% labelled negatives, the rest chit-chat); per account and in total:
  offered msg/s, messages emitted and stored (rows of the account in ``inbound_messages``), lost (emitted,
  never stored: must be 0), completion rate (stored / (last stored - first emitted)), drain time after the
  last emit, report→reply latency p50/p99 (the sandbox emitting a report to the bot's @-reply arriving at
  that sandbox, both timed in the sandbox process), and CPU (% of one core) of the bot process(es), the
  sandboxes and every other process on the machine.

Each phase waits until every station has stored every message and its outbox is empty. The exit status is 1
when a message was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shlex
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import asyncpg  # noqa: E402
import district_world  # noqa: E402
import yaml  # noqa: E402
from district import (  # noqa: E402
    BotDatabase,
    Child,
    Control,
    CpuWindow,
    add_run_arguments,
    machine,
    ms,
    percentile,
    proc_memory,
    quiet_machine,
    run_bench,
    run_directory,
)
from sqlalchemy.engine import URL, make_url  # noqa: E402

DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
BOT_NAME = district_world.BOT["name"]
Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------ the worlds
def station_id(index: int) -> str:
    return f"st{index:02d}"


def station_world(index: int, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """``district_world.build`` for account ``index`` (seed + index), with ids of its own: the bot, the rooms
    and the residents; the officers and the bot's display name are the default config's, as in district.py.
    """
    sid = station_id(index)
    world, config = district_world.build(args.groups, args.members_min, args.members_max, args.seed + index)
    residents = {c["id"] for c in world["contacts"] if c["role"] == "resident"}

    def contact(contact_id: str) -> str:
        return f"wxid_{sid}_{contact_id.removeprefix('wxid_')}" if contact_id in residents else contact_id

    def room(room_id: str) -> str:
        return f"{sid}-{room_id}"

    world["bot"] = {"id": f"wxid_gonghao_{sid}", "name": BOT_NAME}
    world["contacts"] = [{**c, "id": contact(c["id"])} for c in world["contacts"]]
    world["rooms"] = [
        {**r, "id": room(r["id"]), "members": [contact(m) for m in r["members"]]} for r in world["rooms"]
    ]
    config["station"] = {"id": sid, "name": f"{index}号派出所"}
    config["groups"] = [{**g, "room_id": room(g["room_id"])} for g in config["groups"]]
    return world, config


# ------------------------------------------------------------------------------------------ the database
class AccountStore(Protocol):
    """What the driver reads of one station's rows in the district's database."""

    async def processed(self, tag: str) -> tuple[int, float | None, float | None]: ...

    async def outbox_busy(self) -> int: ...

    async def rows(self) -> int: ...

    async def close(self) -> None: ...


class SqliteAccount:
    """district.BotDatabase (read-only SQLite) for one account of the shared file."""

    def __init__(self, path: Path, account: str) -> None:
        self.database = BotDatabase(path, account)

    async def processed(self, tag: str) -> tuple[int, float | None, float | None]:
        return self.database.processed(tag)

    async def outbox_busy(self) -> int:
        return self.database.outbox_busy()

    async def rows(self) -> int:
        return self.database.connection.execute(
            "SELECT count(*) FROM inbound_messages WHERE account = ?", (self.database.account,)
        ).fetchone()[0]

    async def close(self) -> None:
        self.database.close()


def _wall(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class PostgresAccount:
    """The same reads as BotDatabase on PostgreSQL. ``starts_with`` rather than BotDatabase's range on
    message_id: PostgreSQL compares text by the database's collation, where '-' and '.' may not sort as
    bytes."""

    def __init__(self, pool: asyncpg.Pool, account: str) -> None:
        self.pool, self.account = pool, account

    async def processed(self, tag: str) -> tuple[int, float | None, float | None]:
        row = await self.pool.fetchrow(
            "SELECT count(*), min(received_at), max(received_at) FROM inbound_messages "
            "WHERE account = $1 AND starts_with(message_id, $2)",
            self.account,
            f"{tag}-",
        )
        return row[0], _wall(row[1]), _wall(row[2])

    async def outbox_busy(self) -> int:
        return await self.pool.fetchval(
            "SELECT count(*) FROM outbox WHERE account = $1 AND status IN ('pending', 'sending')",
            self.account,
        )

    async def rows(self) -> int:
        return await self.pool.fetchval(
            "SELECT count(*) FROM inbound_messages WHERE account = $1", self.account
        )

    async def close(self) -> None:
        pass  # the pool is shared, closed by its owner


def asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class ScratchPostgres:
    """A fresh database on the server of ``server_url`` for this run, dropped at the end."""

    def __init__(self, server_url: str) -> None:
        self.server = make_url(server_url)
        self.name = f"bench_accounts_{secrets.token_hex(4)}"
        self.url = self.server.set(database=self.name)
        self.pool: asyncpg.Pool | None = None

    async def create(self) -> None:
        connection = await asyncpg.connect(asyncpg_dsn(self.server))
        try:
            await connection.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await connection.close()

    async def open_pool(self) -> asyncpg.Pool:
        self.pool = await asyncpg.create_pool(asyncpg_dsn(self.url), min_size=1, max_size=2)
        return self.pool

    async def drop(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        connection = await asyncpg.connect(asyncpg_dsn(self.server))
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await connection.close()


# ------------------------------------------------------------------------------------------ processes
@dataclass
class Account:
    """One station account: its world is written to ``directory/world.json`` for its sandbox, and only its
    size is kept here (three worlds of 130,000 residents would weigh on the driver's garbage collector)."""

    index: int
    directory: Path
    config: dict[str, Any]
    bot_id: str
    groups: int
    memberships: int
    contacts: int
    token: str = field(default_factory=lambda: f"accounts-{secrets.token_hex(8)}")
    control: Control = field(default_factory=Control)
    sandbox: Child | None = None
    endpoint: str = ""
    config_path: Path | None = None
    store: AccountStore | None = None

    @property
    def station(self) -> str:
        return station_id(self.index)

    @property
    def token_env(self) -> str:
        return f"{self.station.upper()}_PUPPET_TOKEN"


@dataclass
class BotProcess:
    name: str  # "district" (every station) or a station id
    stations: list[Account]
    child: Child


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECHATY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ProcessesCpu:
    """district.CpuWindow over every bot and sandbox process. CpuWindow calls one of its processes "bot" (for
    its CPU seconds per message): here the first bot process, the others are named after their stations."""

    def __init__(self, bots: dict[str, int], sandboxes: dict[str, int]) -> None:
        self.names: dict[str, tuple[str, str]] = {}
        pids: dict[str, int] = {}
        for position, (name, pid) in enumerate(bots.items()):
            key = "bot" if position == 0 else f"bot_{name}"
            self.names[key], pids[key] = ("bots", name), pid
        for name, pid in sandboxes.items():
            self.names[f"sandbox_{name}"], pids[f"sandbox_{name}"] = ("sandboxes", name), pid
        self.window = CpuWindow(**pids)

    def percent(self, until: float) -> dict[str, Any]:
        used = self.window.percent(until)
        out: dict[str, Any] = {"bots": {}, "sandboxes": {}, "others": used["others"]}
        for key, (kind, name) in self.names.items():
            out[kind][name] = used[key]
        out["bot_total"] = sum(out["bots"].values())
        out["sandbox_total"] = sum(out["sandboxes"].values())
        return out


# ------------------------------------------------------------------------------------------ the run
class AccountsBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_dir = run_directory(args.workdir, "gonghao-accounts-")
        self.accounts: list[Account] = []
        self.bots: list[BotProcess] = []
        self.children: list[Child] = []
        self.postgres: ScratchPostgres | None = None
        self.database_url = ""
        self.results: dict[str, Any] = {
            "machine": machine(),
            "command": shlex.join(sys.orig_argv),
            "params": {k: v for k, v in vars(args).items() if k != "json"},
        }

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    async def spawn(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> Child:
        child = Child(name, argv, env=env, cwd=self.run_dir, log=log)
        self.children.append(child)
        await child.start()
        return child

    # -- the database ------------------------------------------------------------------------------
    async def prepare_database(self) -> None:
        a = self.args
        url = a.database_url or (DEFAULT_POSTGRES if a.mode == "per-station" else None)
        if url is None:
            self.database_url = f"sqlite+aiosqlite:///{self.run_dir / 'data' / 'gonghao.db'}"
            self.results["database"] = "SQLite, one file for the district"
            return
        if not url.startswith("postgresql+asyncpg://"):
            raise SystemExit(
                "--mode per-station needs PostgreSQL (--database-url postgresql+asyncpg://...): "
                "several processes cannot share one SQLite file under load"
            )
        self.postgres = ScratchPostgres(url)
        await self.postgres.create()
        self.database_url = self.postgres.url.render_as_string(hide_password=False)
        self.results["database"] = f"PostgreSQL, fresh database {self.postgres.name}"
        self.log(f"created database {self.postgres.name}")

    async def create_schema(self) -> None:
        """``main.py db upgrade`` before any bot starts: bots starting together on an empty database would
        each try to create the schema (models.migrate.ensure_current takes no lock)."""
        assert self.accounts[0].config_path is not None
        child = await self.spawn(
            "db-upgrade",
            [
                sys.executable,
                str(ROOT / "main.py"),
                "db",
                "upgrade",
                "--config",
                str(self.accounts[0].config_path),
            ],
            base_env(),
            self.run_dir / "db-upgrade.log",
        )
        assert child.process is not None
        if await child.process.wait() != 0:
            raise RuntimeError(f"main.py db upgrade failed; see {child.log_path}")

    async def open_stores(self) -> None:
        if self.postgres is not None:
            pool = await self.postgres.open_pool()
            for account in self.accounts:
                account.store = PostgresAccount(pool, account.station)
            return
        for account in self.accounts:
            account.store = SqliteAccount(self.run_dir / "data" / "gonghao.db", account.station)

    # -- the sandboxes -----------------------------------------------------------------------------
    def prepare_account(self, index: int) -> Account:
        """Account ``index``'s world, written for its sandbox; its config is written once the sandbox
        listens (the config names the sandbox's port)."""
        world, config = station_world(index, self.args)
        directory = self.run_dir / station_id(index)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "world.json").write_text(json.dumps(world, ensure_ascii=False), encoding="utf-8")
        return Account(
            index,
            directory,
            config,
            bot_id=world["bot"]["id"],
            groups=len(world["rooms"]),
            memberships=sum(len(r["members"]) for r in world["rooms"]),
            contacts=len(world["contacts"]),
        )

    async def start_sandbox(self, account: Account) -> None:
        a = self.args
        world_path = account.directory / "world.json"
        account.sandbox = await self.spawn(
            f"sandbox-{account.station}",
            [
                sys.executable,
                str(HERE / "district_sandbox.py"),
                "--world",
                str(world_path),
                "--token",
                account.token,
                "--seed",
                str(a.seed + account.index),
                "--report-share",
                str(a.report_share),
                "--negative-share",
                str(a.negative_share),
            ],
            base_env(),
            account.directory / "sandbox.log",
        )
        await account.sandbox.wait_line('"endpoint"', a.start_timeout)
        ready = json.loads(next(line for _, line in account.sandbox.lines if '"endpoint"' in line))
        account.endpoint = ready["endpoint"]
        await account.control.connect(ready["control"])

    async def start_sandboxes(self) -> None:
        a = self.args
        began = time.perf_counter()
        self.accounts = [self.prepare_account(index) for index in range(1, a.accounts + 1)]
        await asyncio.gather(*(self.start_sandbox(account) for account in self.accounts))
        self.results["sandboxes"] = {
            "ready_s": round(time.perf_counter() - began, 2),
            "groups": sum(acc.groups for acc in self.accounts),
            "memberships": sum(acc.memberships for acc in self.accounts),
            "contacts": sum(acc.contacts for acc in self.accounts),
        }
        self.log(
            f"{len(self.accounts)} sandboxes ready in {self.results['sandboxes']['ready_s']:.1f} s: "
            f"{self.results['sandboxes']['groups']} groups, {self.results['sandboxes']['memberships']} "
            f"memberships; run directory {self.run_dir}"
        )

    # -- the configs and the bots --------------------------------------------------------------------
    def write_configs(self) -> Path:
        for account in self.accounts:
            config = {
                **account.config,
                "puppet": {"endpoint": account.endpoint, "token_env": account.token_env},
                "intake": {**account.config.get("intake", {}), "payload_helper": self.args.payload_helper},
            }
            account.config_path = district_world.write_config(config, account.directory, self.database_url)
        path = self.run_dir / "district.yaml"
        district = {
            "district": {"id": "bench", "name": "基准分局"},
            "database": {"url": self.database_url, "sqlite_sync": self.args.sqlite_sync},
            "stations": [
                str(acc.config_path.relative_to(self.run_dir)) for acc in self.accounts if acc.config_path
            ],
        }
        path.write_text(yaml.safe_dump(district, allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path

    async def start_bots(self, district_path: Path) -> None:
        main = [sys.executable, str(ROOT / "main.py"), "--config", str(district_path)]
        if self.args.mode == "one-process":
            env = base_env() | {acc.token_env: acc.token for acc in self.accounts}
            child = await self.spawn("bot", main, env, self.run_dir / "bot.log")
            self.bots = [BotProcess("district", self.accounts, child)]
            return
        for account in self.accounts:
            env = base_env() | {account.token_env: account.token}
            child = await self.spawn(
                f"bot-{account.station}",
                [*main, "--station", account.station],
                env,
                account.directory / "bot.log",
            )
            self.bots.append(BotProcess(account.station, [account], child))

    async def wait_logins(self) -> dict[str, Any]:
        """Every station's "logged in as NAME (BOT_ID)" line; start-up is counted from its process's start."""
        timeout = self.args.login_timeout

        async def login(bot: BotProcess, account: Account) -> tuple[str, float]:
            when = await bot.child.wait_line(f"logged in as {BOT_NAME} ({account.bot_id})", timeout)
            return account.station, when - bot.child.started_wall

        waits = [login(bot, account) for bot in self.bots for account in bot.stations]
        per_station = dict(await asyncio.gather(*waits))
        await asyncio.gather(*(acc.control.call("wait_connected", timeout=60) for acc in self.accounts))
        processes = [
            {
                "name": bot.name,
                "pid": bot.child.pid,
                "startup_s": max(per_station[acc.station] for acc in bot.stations),
                "rss_login": proc_memory(bot.child.pid),
            }
            for bot in self.bots
        ]
        startup = {"stations_s": per_station, "all_s": max(per_station.values()), "processes": processes}
        self.log(
            f"every station logged in after {startup['all_s']:.2f} s ("
            + ", ".join(f"{sid} {seconds:.2f} s" for sid, seconds in per_station.items())
            + "); RSS "
            + ", ".join(f"{p['name']} {p['rss_login'].get('VmRSS', 0):.0f} MB" for p in processes)
        )
        return startup

    # -- a phase -------------------------------------------------------------------------------------
    def cpu(self) -> ProcessesCpu:
        return ProcessesCpu(
            {bot.name: bot.child.pid for bot in self.bots},
            {acc.station: acc.sandbox.pid for acc in self.accounts if acc.sandbox is not None},
        )

    async def drain(
        self, tag: str, expected: dict[str, int]
    ) -> dict[str, tuple[int, float | None, float | None]]:
        """Until every station stored all its messages of ``tag`` and its outbox is empty; gives up when no
        station stored anything for ``--stall-timeout`` s (what is missing is then reported as lost)."""
        stalled_since, seen = time.monotonic(), -1
        while True:
            counts = {acc.station: await self.store(acc).processed(tag) for acc in self.accounts}
            busy = {acc.station: await self.store(acc).outbox_busy() for acc in self.accounts}
            if all(counts[s][0] >= expected[s] and busy[s] == 0 for s in expected):
                return counts
            stored = sum(count for count, _, _ in counts.values())
            if stored != seen:
                seen, stalled_since = stored, time.monotonic()
            elif time.monotonic() - stalled_since > self.args.stall_timeout:
                self.log(
                    f"{tag}: gave up after {self.args.stall_timeout:.0f} s without progress: "
                    + ", ".join(
                        f"{s} {counts[s][0]}/{expected[s]} stored, {busy[s]} outbox rows" for s in expected
                    )
                )
                return counts
            await asyncio.sleep(0.25)

    @staticmethod
    def store(account: Account) -> AccountStore:
        assert account.store is not None
        return account.store

    async def phase(self, tag: str, rate: float, seconds: float) -> dict[str, Any]:
        cpu = self.cpu()
        share = rate / len(self.accounts)
        loads = await asyncio.gather(
            *(acc.control.call("load", tag=tag, rate=share, seconds=seconds) for acc in self.accounts)
        )
        emitted = {acc.station: load for acc, load in zip(self.accounts, loads, strict=True)}
        counts = await self.drain(tag, {s: load["emitted"] for s, load in emitted.items()})
        drained = time.time()
        await asyncio.sleep(0.5)  # replies sent just now reach their sandbox
        got = await asyncio.gather(*(acc.control.call("results", tag=tag) for acc in self.accounts))
        used = cpu.percent(drained)
        per_account = [
            await self.account_result(acc, emitted[acc.station], counts[acc.station], answer, used)
            for acc, answer in zip(self.accounts, got, strict=True)
        ]
        out = {
            "tag": tag,
            "requested_rate": rate,
            "seconds": seconds,
            "accounts": per_account,
            "total": total_result(per_account, list(emitted.values()), counts, got),
            "cpu_percent": used,
            "memory": {bot.name: proc_memory(bot.child.pid) for bot in self.bots},
        }
        t = out["total"]
        self.log(
            f"{tag}: offered {t['offered_rate']:.0f} msg/s, {t['stored']}/{t['emitted']} stored, "
            f"lost {t['lost']}, completion {t['rate']:.0f} msg/s, drained {seconds_cell(t['drain_s'])} after "
            "the last emit; report->reply "
            f"p50 {ms(t['latency']['p50'])} ms p99 {ms(t['latency']['p99'])} ms ({t['replies']} replies); "
            f"CPU bots {used['bot_total']}% sandboxes {used['sandbox_total']}% others {used['others']}%"
        )
        return out

    async def account_result(
        self,
        account: Account,
        load: dict[str, Any],
        counts: tuple[int, float | None, float | None],
        answer: dict[str, Any],
        used: dict[str, Any],
    ) -> dict[str, Any]:
        stored, _first, last = counts
        latencies = [s["latency"] for s in answer["samples"]]
        return {
            "station": account.station,
            "groups": account.groups,
            "offered_rate": load["offered_rate"],
            "emitted": load["emitted"],
            "kinds": {k: v for k, v in load["counts"].items() if k in ("report", "negative", "chat")},
            "stored": stored,
            "lost": load["emitted"] - stored,
            "rows": await self.store(account).rows(),
            "rate": stored / (last - load["start_wall"]) if last and last > load["start_wall"] else 0.0,
            "drain_s": (last - load["end_wall"]) if last else None,
            "lag_p99_ms": load["lag_p99_ms"],
            "replies": len(latencies),
            "unanswered_reports": answer["unanswered"],
            "latency": latency(latencies),
            "cpu_bot": used["bots"].get(account.station),
            "cpu_sandbox": used["sandboxes"][account.station],
        }

    # -- the whole run ---------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        a = self.args
        try:
            self.results["others_before_percent"] = await quiet_machine(a.wait_quiet, self.log)
            await self.prepare_database()
            await self.start_sandboxes()
            district_path = self.write_configs()
            await self.create_schema()
            await self.open_stores()
            await self.start_bots(district_path)
            self.results["startup"] = await self.wait_logins()
            if a.warmup_seconds > 0:
                self.results["warmup"] = await self.phase("warm", a.warmup_rate, a.warmup_seconds)
            self.results["steady"] = await self.phase("steady", a.rate, a.seconds)
            self.results["rss_end"] = {bot.name: proc_memory(bot.child.pid) for bot in self.bots}
            self.results["sandbox_rss_end"] = {
                acc.station: proc_memory(acc.sandbox.pid) for acc in self.accounts if acc.sandbox is not None
            }
            self.results["exit"] = await self.stop_bots()
            self.results["log_warnings"] = log_warnings([bot.child for bot in self.bots])
        finally:
            await self.stop_everything()
        return self.results

    async def stop_bots(self) -> dict[str, dict[str, Any]]:
        stopped = await asyncio.gather(*(bot.child.stop() for bot in self.bots))
        return {
            bot.name: {"code": code, "seconds": took}
            for bot, (code, took) in zip(self.bots, stopped, strict=True)
        }

    async def stop_everything(self) -> None:
        """Bots first (they write), then the sandboxes, then the database; a step that fails does not keep the
        next from running. The sandboxes get SIGTERM, which they take as a quit: a "quit" on the control
        channel would queue behind a load still running when the driver is interrupted."""
        await stop_children([bot.child for bot in self.bots], self.log)
        await stop_children([acc.sandbox for acc in self.accounts if acc.sandbox is not None], self.log)
        await stop_children(self.children, self.log)  # whatever is left (the schema upgrade)
        for account in self.accounts:
            account.control.close()
            if account.store is not None:
                await quietly(account.store.close(), self.log)
        if self.postgres is not None:
            if self.args.keep:
                self.log(f"database kept: {self.postgres.name}")
            else:
                await quietly(self.postgres.drop(), self.log)


async def stop_children(children: list[Child], log: Log) -> None:
    await asyncio.gather(*(quietly(child.stop(timeout=20), log) for child in children))


async def quietly(step: Awaitable[Any], log: Log) -> None:
    try:
        await step
    except Exception as exc:  # clean-up goes on with the next process
        log(f"clean-up: {type(exc).__name__}: {exc}")


def latency(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99), "max": max(values, default=None)}


def total_result(
    per_account: list[dict[str, Any]],
    loads: list[dict[str, Any]],
    counts: dict[str, tuple[int, float | None, float | None]],
    answers: list[dict[str, Any]],
) -> dict[str, Any]:
    start = min(load["start_wall"] for load in loads)
    lasts = [last for _, _, last in counts.values() if last]
    last = max(lasts, default=None)
    stored = sum(r["stored"] for r in per_account)
    latencies = [s["latency"] for answer in answers for s in answer["samples"]]
    return {
        "offered_rate": sum(r["offered_rate"] for r in per_account),
        "emitted": sum(r["emitted"] for r in per_account),
        "stored": stored,
        "lost": sum(r["lost"] for r in per_account),
        "rows": sum(r["rows"] for r in per_account),
        "rate": stored / (last - start) if last and last > start else 0.0,
        "drain_s": (last - max(load["end_wall"] for load in loads)) if last else None,
        "replies": len(latencies),
        "unanswered_reports": sum(r["unanswered_reports"] for r in per_account),
        "latency": latency(latencies),
    }


def log_warnings(children: list[Child]) -> list[tuple[str, int]]:
    """The bots' ERROR/WARNING lines and tracebacks, numbers and ids folded, most frequent first."""
    warnings: dict[str, int] = {}
    for child in children:
        for _, line in child.lines:
            if re.match(r"^[\w.]+(Error|Exception): ", line):
                text = line
            elif "ERROR" in line or "WARNING" in line:
                text = line.split(" ", 2)[-1]
            else:
                continue
            key = re.sub(r"<[^>]*>|[0-9a-f]{8,}|\b[\w-]*-\d{7}\b|\d+", "#", text)[:140]
            warnings[key] = warnings.get(key, 0) + 1
    return sorted(warnings.items(), key=lambda kv: -kv[1])[:12]


# ------------------------------------------------------------------------------------------ report
def machine_line(m: dict[str, Any]) -> str:
    return (
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}, SQLite "
        f"{m['sqlite']}, wechaty {m['wechaty']}, grpclib {m['grpclib']}, kernel {m['kernel']}; "
        f"code {m.get('revision', '?')}"
    )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 'es' if noun.endswith('s') else 's'}"


def mb(memory: dict[str, float], key: str = "VmRSS") -> str:
    return f"{memory.get(key, 0):.0f} MB"


def seconds_cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def startup_table(results: dict[str, Any]) -> list[str]:
    startup = results["startup"]
    lines = [
        "| bot process | start → every station logged in | RSS after login | RSS at the end (peak) "
        "| exit on SIGTERM |",
        "|---|---|---|---|---|",
    ]
    for process in startup["processes"]:
        name = process["name"]
        end = results.get("rss_end", {}).get(name, {})
        code = results.get("exit", {}).get(name, {})
        lines.append(
            f"| {name} (pid {process['pid']}) | {process['startup_s']:.2f} s | {mb(process['rss_login'])} | "
            f"{mb(end)} ({mb(end, 'VmHWM')}) | code {code.get('code')}, {code.get('seconds', 0):.2f} s |"
        )
    stations = ", ".join(f"{sid} {s:.2f} s" for sid, s in startup["stations_s"].items())
    lines += ["", f"every station logged in after {startup['all_s']:.2f} s ({stations})"]
    return lines


PHASE_HEADER = [
    "| phase | account | groups | offered msg/s | emitted | stored (rows of the account) | lost "
    "| completion msg/s | drain after last emit | report→reply p50 / p99 | replies (unanswered reports) "
    "| CPU % bot | CPU % sandbox | CPU % others |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def phase_rows(name: str, phase: dict[str, Any], per_station_cpu: bool) -> list[str]:
    """One row per account and one for the district; a bot process serving every station has no CPU figure
    of its own per station."""
    cpu = phase["cpu_percent"]
    rows = [
        phase_row(
            name,
            r["station"],
            r["groups"],
            r,
            f"{r['cpu_bot']}" if per_station_cpu else "(one process)",
            f"{r['cpu_sandbox']}",
            "",
        )
        for r in phase["accounts"]
    ]
    groups = sum(r["groups"] for r in phase["accounts"])
    total = phase["total"]
    rows.append(
        phase_row(
            name,
            "**total**",
            groups,
            total,
            f"{cpu['bot_total']}",
            f"{cpu['sandbox_total']}",
            f"{cpu['others']}",
        )
    )
    return rows


def phase_row(
    phase: str, name: str, groups: int, r: dict[str, Any], bot_cpu: str, sandbox_cpu: str, others: str
) -> str:
    return (
        f"| {phase} | {name} | {groups} | {r['offered_rate']:.1f} | {r['emitted']} | {r['stored']} "
        f"({r['rows']}) | {r['lost']} | {r['rate']:.1f} | {seconds_cell(r['drain_s'])} | "
        f"{ms(r['latency']['p50'])} / {ms(r['latency']['p99'])} ms | "
        f"{r['replies']} ({r['unanswered_reports']}) | {bot_cpu} | {sandbox_cpu} | {others} |"
    )


def report(results: dict[str, Any]) -> str:
    p, sandboxes = results["params"], results["sandboxes"]
    lines = [
        machine_line(results["machine"]),
        f"command: {results['command']}",
        f"world: {p['accounts']} accounts x {p['groups']} groups = {sandboxes['groups']} groups, "
        f"{sandboxes['memberships']} memberships ({p['members_min']}-{p['members_max']} residents per "
        "group), "
        f"{sandboxes['contacts']} contacts, one sandbox per account (ready in {sandboxes['ready_s']:.1f} s); "
        f"traffic {100 * p['report_share']:.0f}% reports, {100 * p['negative_share']:.0f}% labelled "
        "negatives, "
        f"the rest chit-chat; seed {p['seed']}",
        f"bot: --mode {p['mode']} ({plural(len(results['startup']['processes']), 'bot process')}); database: "
        f"{results['database']}; other processes used {results['others_before_percent']:.0f}% of a core "
        "before the start",
        "",
        *startup_table(results),
        "",
    ]
    per_station_cpu = p["mode"] == "per-station"
    warmup = (
        f"warm-up at {p['warmup_rate']:g} msg/s for {p['warmup_seconds']:g} s, then "
        if "warmup" in results
        else ""
    )
    lines += [
        f"{warmup}steady: {p['rate']:g} msg/s in total for {p['seconds']:g} s ({p['rate'] / p['accounts']:g} "
        "per account), Poisson; CPU in % of one core; a report that joins an open incident is answered at "
        "most every intake.joined_reply_every, so it can count as unanswered:",
        "",
        *PHASE_HEADER,
        *(phase_rows("warm-up", results["warmup"], per_station_cpu) if "warmup" in results else []),
        *phase_rows("steady", results["steady"], per_station_cpu),
    ]
    if results.get("log_warnings"):
        lines += [
            "",
            "bot log warnings/errors (count): " + "; ".join(f"{v}x {k}" for k, v in results["log_warnings"]),
        ]
    return "\n".join(lines)


def lost_messages(results: dict[str, Any]) -> int:
    return sum(results[name]["total"]["lost"] for name in ("warmup", "steady") if name in results)


# ------------------------------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=3, help="station accounts, one sandbox each")
    parser.add_argument("--groups", type=int, default=100, help="groups per account")
    parser.add_argument("--members-min", type=int, default=300, help="residents per group, at least")
    parser.add_argument("--members-max", type=int, default=500, help="residents per group, at most")
    parser.add_argument("--mode", choices=["one-process", "per-station"], default="one-process")
    parser.add_argument(
        "--database-url",
        help="PostgreSQL server for a fresh database of this run (postgresql+asyncpg://...; the database "
        f"named in it is only connected to). Default: SQLite in one process, {DEFAULT_POSTGRES} per station",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--report-share", type=float, default=0.02, help="share of reports (labelled positives)"
    )
    parser.add_argument("--negative-share", type=float, default=0.08, help="share of labelled negatives")
    parser.add_argument("--rate", type=float, default=300, help="steady rate, msg/s over all the accounts")
    parser.add_argument("--seconds", type=float, default=10, help="length of the steady phase")
    parser.add_argument("--warmup-rate", type=float, default=50, help="msg/s over all the accounts")
    parser.add_argument("--warmup-seconds", type=float, default=5, help="0: no warm-up")
    parser.add_argument("--start-timeout", type=float, default=600, help="seconds for a sandbox to be ready")
    parser.add_argument(
        "--login-timeout", type=float, default=600, help="seconds for every station to log in"
    )
    add_run_arguments(parser, wait_quiet=20, kept="and the PostgreSQL database")
    args = parser.parse_args()
    if args.accounts < 1:
        parser.error("--accounts must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    bench = AccountsBench(args)
    results = run_bench(bench)
    if results is None:
        return 130
    text = report(results)
    print(text)
    payload = json.dumps(results, ensure_ascii=False, indent=1, default=str)
    if args.json:
        args.json.write_text(payload, encoding="utf-8")
    if args.keep or args.workdir:
        (bench.run_dir / "results.json").write_text(payload, encoding="utf-8")
        (bench.run_dir / "report.md").write_text(text + "\n", encoding="utf-8")
        print(f"\nrun directory kept: {bench.run_dir}", file=sys.stderr)
    else:
        shutil.rmtree(bench.run_dir, ignore_errors=True)
    lost = lost_messages(results)
    if lost:
        print(f"LOST {lost} messages (emitted, never stored)", file=sys.stderr)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
