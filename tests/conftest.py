"""Shared fixtures: a controllable clock, real databases (a SQLite file and the machine's PostgreSQL),
and config files written from inline YAML."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from bot.app import App, PuppetTarget
from bot.sandbox import Sandbox, load_world
from models.db import Database
from models.tables import Incident

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("GONGHAO_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


class FakeClock:
    """An injectable clock: tests move time instead of sleeping."""

    def __init__(self, now: datetime) -> None:
        self.current = now

    def __call__(self) -> datetime:
        return self.current

    def set_local(self, text_time: str, zone: str = "Asia/Shanghai") -> None:
        from zoneinfo import ZoneInfo

        self.current = datetime.fromisoformat(text_time).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


@pytest.fixture
def clock() -> FakeClock:
    fake = FakeClock(datetime.now(UTC))
    fake.set_local("2026-11-27 10:00")  # a Friday morning: community officers on shift
    return fake


async def _postgres(schema: str) -> Database:
    admin = Database(PG_URL)
    try:
        async with admin.engine.begin() as connection:
            await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # make the cause obvious instead of a stack of driver frames
        raise RuntimeError(f"PostgreSQL for tests is not reachable at {PG_URL}: {exc}") from exc
    finally:
        await admin.close()
    return Database(PG_URL, schema=schema)


async def _drop_postgres(schema: str) -> None:
    admin = Database(PG_URL)
    try:
        async with admin.engine.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh, real database with the schema created: once as a SQLite file, once on PostgreSQL."""
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'gonghao.db'}")
        await db.create_schema()
        yield db
        await db.close()
        return
    schema = f"gh_test_{uuid.uuid4().hex[:10]}"
    db = await _postgres(schema)
    await db.create_schema()
    yield db
    await db.close()
    await _drop_postgres(schema)


@pytest.fixture
async def scratch_pg_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database (not just a schema) for tests that run the bot as a whole, even as
    separate processes; its URL. Dropped afterwards."""
    async with scratch_pg() as url:
        yield url


@asynccontextmanager
async def scratch_pg() -> AsyncIterator[str]:
    name = f"gonghao_scratch_{uuid.uuid4().hex[:8]}"
    admin = Database(PG_URL)
    async with admin.engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    async with admin.engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.close()


@pytest.fixture
def default_config_text() -> str:
    return (ROOT / "config.yaml").read_text(encoding="utf-8")


def write_config(directory: Path, text_yaml: str, database_url: str | None = None, *, paced: bool = False) -> Path:
    """Write a config into ``directory`` with its data (and SQLite file) kept there too.

    Unless ``paced``, sending is not paced: most tests freeze a fake clock, and pacing is tested on its own.
    """
    import yaml

    data = yaml.safe_load(text_yaml)
    data.setdefault("web", {})["port"] = 0  # any free port: tests run many apps
    if not paced:
        data.setdefault("outbox", {}).update(group_interval="0s", group_jitter="0s", private_interval="0s",
                                             group_per_minute=100000)
    data["data_dir"] = str(directory / "data")
    data.setdefault("database", {})["url"] = database_url or f"sqlite+aiosqlite:///{directory / 'data' / 'gonghao.db'}"
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def with_payload_helper(text_yaml: str, on: bool | str = True) -> str:
    """A config text with ``intake.payload_helper`` set (message payloads fetched by a helper process): on,
    off, or "auto"."""
    import yaml

    data = yaml.safe_load(text_yaml)
    data.setdefault("intake", {})["payload_helper"] = on
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


BOT = "wxid_gonghao_bot"
JINXIU = "jinxiu@chatroom"
FANGDIAN = "fangdian@chatroom"
WANG = "wxid_officer_wang"
CHEN = "wxid_officer_chen"


@dataclass
class Env:
    sandbox: Sandbox
    app: App
    clock: FakeClock
    config_path: Path

    async def outcome_of(self, message_id: str, timeout: float = 10) -> str:
        """Wait until the bot has handled a message; returns what the pipeline did with it."""
        assert self.app.handled is not None

        async def find() -> str:
            while True:
                inbound, outcome = await self.app.handled.get()  # type: ignore[union-attr]
                if inbound.message_id == message_id:
                    return outcome

        return await asyncio.wait_for(find(), timeout)

    async def bot_says(self, conversation: str, after: int, pattern: str = "", timeout: float = 15) -> dict[str, Any]:
        return await self.sandbox.wait_for(
            conversation, lambda m: m["from"] == BOT and re.search(pattern, m["text"]) is not None,
            after=after, timeout=timeout,
        )

    def bot_messages(self, conversation: str, after: int) -> list[dict[str, Any]]:
        return [m for m in self.sandbox.messages(conversation, after) if m["from"] == BOT]

    async def incidents(self) -> list[Incident]:
        assert self.app.station is not None
        async with self.app.station.db.session() as session:
            return list((await session.scalars(select(Incident).order_by(Incident.id))).all())


@pytest.fixture
def env_database() -> str:
    """Where the ``env`` bot keeps its data: "sqlite" (a file in the test's directory) or "postgresql" (a
    scratch database). A test parametrizes this name to run on both."""
    return "sqlite"


@pytest.fixture
async def env(tmp_path: Path, clock: FakeClock, default_config_text: str, env_database: str) -> AsyncIterator[Env]:
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(scratch_pg()) if env_database == "postgresql" else None
        sandbox = Sandbox(load_world(None), token="e2e-test-token-0001")
        await sandbox.start()
        stack.push_async_callback(sandbox.stop)
        config_path = write_config(tmp_path, default_config_text, url)
        app = App(config_path, puppet=PuppetTarget(sandbox.token, sandbox.endpoint), clock=clock, watch=False)
        app.handled = asyncio.Queue()
        stack.push_async_callback(app.stop)
        await app.start()
        await app.wait_logged_in()
        # the first round of timers records who is on duty at the start (the return digest counts from it)
        await asyncio.wait_for(app.timers_ran.wait(), 10)
        yield Env(sandbox, app, clock, config_path)


