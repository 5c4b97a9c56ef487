"""Schema migrations: a fresh database is built by the Alembic scripts, matches the models exactly, and a
database behind the code is refused with the command that fixes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

import models.all_tables  # noqa: F401
from bot.app import App, PuppetTarget
from models.base import Base
from models.db import Database
from models.migrate import SchemaOutdated, current_revision, ensure_current, head_revision, upgrade
from tests.conftest import ROOT, write_config


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:  # type: ignore[misc]
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
        yield db
        await db.close()
        return
    import uuid

    from tests.conftest import _drop_postgres, _postgres

    schema = f"gh_mig_{uuid.uuid4().hex[:10]}"
    db = await _postgres(schema)
    yield db
    await db.close()
    await _drop_postgres(schema)


async def test_migrations_build_exactly_the_models(empty_database: Database) -> None:
    assert await ensure_current(empty_database) == "created"
    assert await current_revision(empty_database) == (head_revision(), True)

    def differences(connection: object) -> list[object]:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)  # type: ignore[arg-type]

    async with empty_database.engine.connect() as connection:
        assert await connection.run_sync(differences) == []
    assert await ensure_current(empty_database) == "current"
    await upgrade(empty_database)  # idempotent


async def test_a_database_behind_the_code_is_refused(tmp_path: Path, default_config_text: str) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    database = Database(url)
    await upgrade(database)
    async with database.engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = 'old0'"))
    with pytest.raises(SchemaOutdated, match=r"main\.py db upgrade"):
        await ensure_current(database)
    await database.close()
    app = App(write_config(tmp_path, default_config_text, database_url=url),
              puppet=PuppetTarget("unused-token", "127.0.0.1:1"), watch=False)
    with pytest.raises(SchemaOutdated):
        await app.start()


def test_db_cli(tmp_path: Path, default_config_text: str) -> None:
    config = write_config(tmp_path, default_config_text)
    run = [sys.executable, str(ROOT / "main.py"), "db", "--config", str(config)]
    status = subprocess.run([*run, "status"], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "revision (none)" in status.stdout
    upgraded = subprocess.run([*run, "upgrade"], capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0 and f"(empty) -> {head_revision()}" in upgraded.stdout
    status = subprocess.run([*run, "status"], capture_output=True, text=True, timeout=120)
    assert f"revision {head_revision()}: current" in status.stdout


async def test_processes_starting_together_on_an_empty_postgresql_create_the_schema_once() -> None:
    """Station processes of a district often start at the same moment on a new database: each finds it
    empty, and without a lock both would create the tables (the second failing on "already exists")."""
    import asyncio
    import uuid

    from tests.conftest import PG_URL, _drop_postgres, _postgres

    schema = f"gh_mig_{uuid.uuid4().hex[:10]}"
    first = await _postgres(schema)
    others = [Database(PG_URL, schema=schema) for _ in range(3)]
    try:
        outcomes = await asyncio.gather(*(ensure_current(db) for db in [first, *others]))
        assert sorted(outcomes) == ["created", "current", "current", "current"]
        assert await current_revision(first) == (head_revision(), True)
    finally:
        for db in [first, *others]:
            await db.close()
        await _drop_postgres(schema)
