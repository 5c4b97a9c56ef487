"""Engine and sessions for a SQLite file or a PostgreSQL URL."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Literal

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from models.base import Base
from models.sqlite_inline import InlineSession, inline_creator
from models.wal_checkpoint import WalCheckpointer

SqliteSync = Literal["full", "normal"]


class Database:
    def __init__(self, url: str, *, schema: str | None = None, sqlite_sync: SqliteSync = "full") -> None:
        """``schema`` (PostgreSQL only) puts every table in that schema, e.g. one per test run.
        ``sqlite_sync`` (a SQLite file only): whether :meth:`durable` waits for the WAL's fsync ("full") or
        returns at once ("normal"); either way commits do not fsync in the loop's thread and a thread of its
        own syncs and checkpoints the WAL (``models/wal_checkpoint.py``)."""
        self.url = url
        self.sqlite_sync = sqlite_sync
        self.checkpointer: WalCheckpointer | None = None
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        sqlite_file = parsed.database if self.is_sqlite and parsed.database not in (None, "", ":memory:") else None
        if sqlite_file is not None:
            Path(sqlite_file).parent.mkdir(parents=True, exist_ok=True)
            self.checkpointer = WalCheckpointer(sqlite_file)
        connect_args: dict[str, object] = {}
        if schema and not self.is_sqlite:
            connect_args["server_settings"] = {"search_path": schema}
        pool: dict[str, object] = {}
        if self.is_sqlite:
            # SQLite has one writer at a time, and a connection that finds the lock taken waits in SQLite's
            # busy handler, which sleeps in steps of up to 100 ms: under load the outbox sender starved
            # behind the intake for seconds. One connection makes every transaction of this process queue in
            # asyncio instead, first come first served, with no sleeping (WAL still lets other processes read).
            pool = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 60}
        if self.is_sqlite:
            # statements run in the loop's thread, not on aiosqlite's worker (see models/sqlite_inline.py)
            pool["async_creator"] = inline_creator(
                parsed.database or ":memory:", self.checkpointer.committed if self.checkpointer else None)
        self.engine: AsyncEngine = create_async_engine(
            url, pool_pre_ping=not self.is_sqlite, connect_args=connect_args, **pool
        )
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect",
                         partial(_sqlite_pragmas, self.checkpointer is not None))
            if self.checkpointer is not None:
                event.listen(self.engine.sync_engine, "connect", self._start_checkpointer)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False,
                                           class_=InlineSession if self.is_sqlite else AsyncSession)

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    def session(self) -> AsyncSession:
        return self.sessions()

    async def create_schema(self) -> None:
        """Every table at once, without migrations: for tests of handlers on a scratch database. Running
        installations use ``models.migrate`` (``main.py db upgrade``)."""
        import models.all_tables  # noqa: F401

        async with self.engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)

    def _start_checkpointer(self, _dbapi_connection: object, _record: object) -> None:
        assert self.checkpointer is not None
        if not self.checkpointer.started:  # once, though the pool may connect again after an error
            self.checkpointer.start()

    async def durable(self) -> None:
        """Return once everything committed so far is on disk: before the bot acts on it (sends a reply or a
        ping). PostgreSQL's commit is durable when it returns; so is SQLite's with sqlite_sync normal, as far
        as that setting promises."""
        await self.sync_now()

    def sync_now(self) -> asyncio.Future[None]:
        """:meth:`durable` in two steps: the sync starts now, and the future is done once everything committed
        before this call is on disk. Done at once when nothing needs waiting for."""
        if self.checkpointer is not None and self.sqlite_sync == "full":
            return self.checkpointer.sync_now()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def close(self) -> None:
        await self.engine.dispose()
        if self.checkpointer is not None:
            self.checkpointer.stop()  # after the station's connection: the last one out leaves no WAL


def _sqlite_pragmas(synced_elsewhere: bool, dbapi_connection: object, _record: object) -> None:
    # WAL lets the sender loop read while a handler writes; the busy timeout rides out short write locks.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    if synced_elsewhere:  # the checkpointer's thread fsyncs and checkpoints, off the loop
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()
