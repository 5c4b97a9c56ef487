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
from sqlalchemy import inspect, text
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


# PostgreSQL advisory lock id (any constant of our own) held while the schema is created or upgraded: the
# processes of a district start together on one database, and concurrent CREATE TABLEs of the same tables
# block each other (a test of four such processes hung until killed).
_SCHEMA_LOCK = 0x6E6F6E6768616F


def _upgrade(connection: Connection, *, only_if_fresh: bool = False) -> bool:
    """Upgrade to head inside the caller's transaction; with ``only_if_fresh``, only a database with none
    of our tables (checked under the lock: another process may have created them meanwhile)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": _SCHEMA_LOCK})
    if only_if_fresh:
        current, has_tables = _state(connection)
        if current is not None or has_tables:
            return False
    config = _alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    return True


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
    if revision is None and not has_tables:
        async with database.engine.begin() as connection:
            if await connection.run_sync(lambda sync: _upgrade(sync, only_if_fresh=True)):
                return "created"
        revision, has_tables = await current_revision(database)  # another process created it meanwhile
    if revision == head:
        return "current"
    raise SchemaOutdated(
        f"the database {database.safe_url} is at schema revision {revision or '(none, but it has tables)'}, "
        f"the code needs {head}: run `python main.py db upgrade --config <config.yaml>` first"
    )
