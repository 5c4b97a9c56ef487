"""Schema migrations with Alembic: upgrade to the newest revision, and check that a database is current.

The migration scripts live in ``models/migrations/versions``. A fresh database is created by running them;
a database behind the code is refused at start-up with the command that fixes it.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from models.db import Database

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class SchemaOutdated(RuntimeError):
    pass


def _alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def _upgrade(connection: Connection) -> None:
    config = _alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def upgrade(database: Database) -> None:
    async with database.engine.begin() as connection:
        await connection.run_sync(_upgrade)


def _state(connection: Connection) -> tuple[str | None, bool]:
    current = MigrationContext.configure(connection).get_current_revision()
    tables = set(inspect(connection).get_table_names()) - {"alembic_version"}
    return current, bool(tables)


async def current_revision(database: Database) -> tuple[str | None, bool]:
    """(revision the database is at, whether it has any of our tables)."""
    async with database.engine.connect() as connection:
        return await connection.run_sync(_state)


async def ensure_current(database: Database) -> str:
    """Create a fresh database's schema; accept a current one; refuse one that is behind (or unknown)."""
    revision, has_tables = await current_revision(database)
    head = head_revision()
    if revision == head:
        return "current"
    if revision is None and not has_tables:
        await upgrade(database)
        return "created"
    raise SchemaOutdated(
        f"the database {database.safe_url} is at schema revision {revision or '(none, but it has tables)'}, "
        f"the code needs {head}: run `python main.py db upgrade --config <config.yaml>` first"
    )
