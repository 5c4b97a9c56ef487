"""Shared fixtures: a controllable clock, real databases (a SQLite file and the machine's PostgreSQL),
and config files written from inline YAML."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from models.db import Database

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
def default_config_text() -> str:
    return (ROOT / "config.yaml").read_text(encoding="utf-8")


def write_config(directory: Path, text_yaml: str, database_url: str | None = None) -> Path:
    """Write a config into ``directory`` with its data (and SQLite file) kept there too."""
    import yaml

    data = yaml.safe_load(text_yaml)
    data["data_dir"] = str(directory / "data")
    data.setdefault("database", {})["url"] = database_url or f"sqlite+aiosqlite:///{directory / 'data' / 'gonghao.db'}"
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
