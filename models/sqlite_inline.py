"""aiosqlite's connection API, carried out in the event loop's own thread.

aiosqlite runs every call (cursor, execute, fetch, close, commit) on a worker thread and hands the result
back through ``call_soon_threadsafe``. SQLAlchemy's adapter makes several such calls per statement, so a
one-row transaction cost ~1.9 ms of CPU (thread wake-ups, the self-pipe, GIL hand-overs) for ~0.03 ms of
SQLite work (``benchmarks/district_pipeline.py``). SQLite on a local file answers the bot's statements in
microseconds, so running them where they are awaited is cheaper than any hand-over. The price is that a
statement blocks the loop while it runs, including any wait in SQLite's busy handler for another process's
write lock, which is why SQLite installations are one process and deployments with heavy reporting or
several processes use PostgreSQL (asyncpg is natively asynchronous). Within the process no transaction
yields to the loop halfway (every statement completes where it is awaited), so the stations of a district
run in one process, each with its own pooled connection (``models/db.py``), never meet each other's lock.

Commits run inline too, without their fsync (``synchronous=NORMAL``): ``models/wal_checkpoint.py`` syncs
the WAL on a thread of its own, and the outbox sender waits for that before it sends (``database.sqlite_sync:
full``). Handing the whole commit, fsync included, to a thread was tried twice: in session 3 it cost ~0.4 ms
of CPU per transaction on a slow VM; in session 6 ~0.1-0.2 ms, ~5% more CPU at half the load ceiling, and a
higher median reply time (the committer waits for the GIL to come back from a busy loop), while the
transactions behind a slow commit still waited for it.

Replaced: the internals ``Connection._execute``, ``_connect`` and ``_tx`` (which SQLAlchemy's adapter uses
directly to set the isolation level), ``__await__`` and ``stop`` (no worker thread to start or stop), and
``commit`` (aiosqlite's, then ``on_commit``); everything else is aiosqlite's own code.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession


class _RunNow:
    """Stands in for aiosqlite's queue to its worker thread: runs the call at once, settles its future."""

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:  # handed to the awaiting caller, as aiosqlite does
            if future is not None and not future.done():
                future.set_exception(exc)
            return
        if future is not None and not future.done():
            future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    def __init__(self, connector: Callable[[], sqlite3.Connection],
                 on_commit: Callable[[], None] | None = None) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._tx = _RunNow()  # type: ignore[assignment]
        self.on_commit = on_commit  # told of every commit (``models/wal_checkpoint.py`` syncs them)

    async def commit(self) -> None:
        await super().commit()
        if self.on_commit is not None:
            self.on_commit()

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    @property
    def sqlite(self) -> sqlite3.Connection:
        """The driver's connection, for statements that skip SQLAlchemy (the pipeline's quiet lane)."""
        return self._conn

    async def _connect(self) -> InlineConnection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def __await__(self) -> Any:
        return self._connect().__await__()  # no worker thread to start

    def stop(self) -> None:  # type: ignore[override]
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class InlineSession(AsyncSession):
    """The station's sessions on a SQLite file. SQLAlchemy closes a session that leaves ``async with`` in a
    task of its own, shielded, so that a cancellation cannot cut the close short; that costs three turns of
    the event loop per transaction, and on a busy loop each turn runs every other ready callback first (a
    reply's transactions waited ~20 ms for them at half the district benchmark's ceiling). Here the close runs
    inline like every statement: it never yields, so no cancellation can land halfway through it."""

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        await self.close()


@asynccontextmanager
async def inline_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """``engine.connect()`` for a SQLite file, closed inline for the reason :class:`InlineSession` gives."""
    connection = await engine.connect()
    try:
        yield connection
    finally:
        await connection.close()


def inline_creator(path: str, on_commit: Callable[[], None] | None = None) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine``: a SQLite file opened in the loop's thread."""

    async def connect() -> InlineConnection:
        # check_same_thread off: the pool may close a connection from a garbage-collecting thread
        return await InlineConnection(lambda: sqlite3.connect(path, check_same_thread=False), on_commit)

    return connect
