"""The two statements every inbound message costs: "what did these senders say lately" (the duplicate-text
check) and "insert these rows unless their message id is stored already". Two implementations with one
meaning:

- ``CoreMessageStore``: SQLAlchemy Core on a session or connection, for PostgreSQL and for any batch that
  also needs the ORM (reports, questions, commands);
- ``SqliteMessageStore``: the same SQL written out for the driver's own connection, for the quiet majority
  on SQLite (``sqlite_lane``). SQLAlchemy's work per statement (greenlet switches, expanding-parameter
  rendering, type processing) cost ~0.6 ms of a quiet one-message batch's ~0.9 ms; SQLite's own work is
  ~0.1 ms. ``tests/test_message_store.py`` runs the same batches through both and compares the rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from models.base import UTCDateTime
from models.db import Database
from models.sqlite_inline import InlineConnection, inline_connection
from models.tables import InboundMessage


@dataclass(frozen=True)
class RecentlySaid:
    """Group messages of these senders with one of these texts, sent within [earliest, latest]."""

    account: str
    senders: Sequence[str]
    texts: Sequence[str]
    earliest: datetime
    latest: datetime


# (message_id, sender_id, room_id, text, sent_at)
SaidRow = tuple[str, str, str | None, str, datetime]


class MessageStore(Protocol):
    async def recently_said(self, query: RecentlySaid) -> Sequence[SaidRow]: ...

    async def insert_new(self, model: type[Any], rows: list[dict[str, Any]]) -> dict[str, int]:
        """INSERT … ON CONFLICT (account, message_id) DO NOTHING; the new rows' ids by message id (a message
        id stored before, by us or by another process, is absent)."""
        ...


_MESSAGES = InboundMessage.__table__
# Built once, bound per batch: building the expressions anew cost more than running them.
_RECENTLY_SAID = select(
    _MESSAGES.c.message_id, _MESSAGES.c.sender_id, _MESSAGES.c.room_id, _MESSAGES.c.text, _MESSAGES.c.sent_at
).where(
    _MESSAGES.c.account == bindparam("account"),
    _MESSAGES.c.sender_id.in_(bindparam("senders", expanding=True)),
    _MESSAGES.c.sent_at >= bindparam("earliest"), _MESSAGES.c.sent_at <= bindparam("latest"),
    _MESSAGES.c.text.in_(bindparam("texts", expanding=True)),
    _MESSAGES.c.room_id.is_not(None),
)
_INSERT_NEW: dict[tuple[str, bool], Any] = {}


def _insert_new(model: type[Any], sqlite: bool) -> Any:
    key = (model.__tablename__, sqlite)
    if key not in _INSERT_NEW:
        table = model.__table__
        insert = sqlite_insert if sqlite else pg_insert
        _INSERT_NEW[key] = (
            insert(table).on_conflict_do_nothing(index_elements=["account", "message_id"])
            .returning(table.c.id, table.c.message_id)
        )
    return _INSERT_NEW[key]


class CoreMessageStore:
    def __init__(self, db: AsyncSession | AsyncConnection, *, sqlite: bool) -> None:
        self.db = db
        self.sqlite = sqlite

    async def recently_said(self, query: RecentlySaid) -> Sequence[SaidRow]:
        parameters = {"account": query.account, "senders": list(query.senders), "texts": list(query.texts),
                      "earliest": query.earliest, "latest": query.latest}
        return [tuple(row) for row in (await self.db.execute(_RECENTLY_SAID, parameters)).all()]  # type: ignore[misc]

    async def insert_new(self, model: type[Any], rows: list[dict[str, Any]]) -> dict[str, int]:
        # executemany on a prebuilt statement: SQLAlchemy compiles it once and sends multi-row INSERTs
        result = await self.db.execute(_insert_new(model, self.sqlite), rows)
        return {message_id: row_id for row_id, message_id in result.all()}


def sqlite_timestamp(value: datetime) -> str:
    """How SQLAlchemy's SQLite DATETIME stores a UTCDateTime (naive UTC, always with microseconds), so that
    rows from both stores compare and sort alike."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTCDateTime column")
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _from_sqlite_timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


# SQLite's limit on bound variables per statement (SQLITE_MAX_VARIABLE_NUMBER, 32766 since 3.32)
_SQLITE_MAX_VARIABLES = 32766


class SqliteMessageStore:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    async def recently_said(self, query: RecentlySaid) -> Sequence[SaidRow]:
        senders = ",".join("?" * len(query.senders))
        texts = ",".join("?" * len(query.texts))
        sql = ("SELECT message_id, sender_id, room_id, text, sent_at FROM inbound_messages "
               f"WHERE account = ? AND sender_id IN ({senders}) AND sent_at >= ? AND sent_at <= ? "
               f"AND text IN ({texts}) AND room_id IS NOT NULL")
        parameters = [query.account, *query.senders, sqlite_timestamp(query.earliest),
                      sqlite_timestamp(query.latest), *query.texts]
        return [(message_id, sender_id, room_id, text, _from_sqlite_timestamp(sent_at))
                for message_id, sender_id, room_id, text, sent_at in self.connection.execute(sql, parameters)]

    async def insert_new(self, model: type[Any], rows: list[dict[str, Any]]) -> dict[str, int]:
        if not rows:
            return {}
        table = model.__table__
        columns = list(rows[0])
        timestamps = {c for c in columns if isinstance(table.c[c].type, UTCDateTime)}
        per_statement = max(1, _SQLITE_MAX_VARIABLES // len(columns))
        placeholders = "(" + ",".join("?" * len(columns)) + ")"
        stored: dict[str, int] = {}
        for start in range(0, len(rows), per_statement):
            chunk = rows[start:start + per_statement]
            sql = (f"INSERT INTO {table.name} ({','.join(columns)}) "
                   f"VALUES {','.join([placeholders] * len(chunk))} "
                   "ON CONFLICT (account, message_id) DO NOTHING RETURNING id, message_id")
            values = [sqlite_timestamp(row[c]) if c in timestamps else row[c]
                      for row in chunk for c in columns]
            stored.update((message_id, row_id) for row_id, message_id in self.connection.execute(sql, values))
        return stored


@asynccontextmanager
async def sqlite_lane(database: Database) -> AsyncIterator[SqliteMessageStore]:
    """A transaction on the process's one SQLite connection (taken from the pool, so nothing else uses it
    meanwhile), driven without SQLAlchemy; committed when the block ends, rolled back if it raises."""
    async with inline_connection(database.engine) as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        assert isinstance(driver, InlineConnection)
        raw = driver.sqlite
        try:
            yield SqliteMessageStore(raw)
            await driver.commit()  # inline, as raw.commit() would be, and counted for the WAL's sync
        except sqlite3.Error as exc:  # raised as SQLAlchemy would, so that callers see one kind of error
            raw.rollback()
            raise DBAPIError.instance(None, None, exc, sqlite3.Error) from exc
        except BaseException:
            raw.rollback()
            raise
