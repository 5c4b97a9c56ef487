"""The SQLite connection that runs in the event loop's thread (models/sqlite_inline.py): SQLAlchemy's whole
async API on it, with no worker thread, errors and rollbacks as with aiosqlite, durable across engines."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from models.db import Database
from models.message_store import sqlite_lane
from models.sqlite_inline import InlineConnection
from models.tables import InboundMessage


async def test_statements_run_in_the_loop_thread_without_a_worker(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}")
    threads_before = {t.ident for t in threading.enumerate()}
    ran_in: list[int] = []
    async with database.engine.begin() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        assert isinstance(raw, InlineConnection)
        await raw.create_function("whose_thread", 0, lambda: ran_in.append(threading.get_ident()) or 1)
        assert (await connection.execute(text("SELECT whose_thread()"))).scalar_one() == 1
        journal = (await connection.execute(text("PRAGMA journal_mode"))).scalar_one()
    assert ran_in == [threading.get_ident()]
    started = {t.name for t in threading.enumerate() if t.ident not in threads_before}
    assert started <= {"sqlite-checkpoint"}  # no aiosqlite worker (the WAL's own syncer may have started)
    assert journal == "wal"
    await database.close()


async def test_commit_rollback_and_errors_behave_as_with_aiosqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}"
    database = Database(url)
    await database.create_schema()
    row = {"account": "huamu", "room_id": "r@chatroom", "group_id": None, "sender_id": "wxid_a",
           "sender_name": "甲", "text": "你好", "kind": "text", "outcome": "quiet"}
    now = datetime(2026, 11, 28, tzinfo=UTC)
    async with database.engine.begin() as connection:
        await connection.execute(InboundMessage.__table__.insert(), [
            {**row, "message_id": "kept", "sent_at": now, "received_at": now}])
    with pytest.raises(RuntimeError):
        async with database.engine.begin() as connection:
            await connection.execute(InboundMessage.__table__.insert(), [
                {**row, "message_id": "rolled-back", "sent_at": now, "received_at": now}])
            raise RuntimeError("the batch failed")
    with pytest.raises(IntegrityError):  # the driver's error, translated by SQLAlchemy as usual
        async with database.engine.begin() as connection:
            await connection.execute(InboundMessage.__table__.insert(), [
                {**row, "message_id": "kept", "sent_at": now, "received_at": now}])
    with pytest.raises(OperationalError):
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT * FROM no_such_table"))
    await database.close()

    reopened = Database(url)  # what was committed is on disk, nothing else
    async with reopened.session() as session:
        ids = (await session.scalars(select(InboundMessage.message_id))).all()
    assert ids == ["kept"]
    await reopened.close()


class _LoopTurns:
    """Counts the event loop's turns: a callback that schedules itself again runs once per turn."""

    def __init__(self) -> None:
        self.turns = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.turns += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


async def test_a_transaction_from_start_to_close_never_yields_to_the_loop(tmp_path: Path) -> None:
    """On a busy loop every turn runs all other ready callbacks first: a transaction that yields waits for
    them. SQLAlchemy's own close of a session or connection leaving ``async with`` took three turns."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}")
    await database.create_schema()
    counter = _LoopTurns()
    await asyncio.sleep(0)  # one turn: the counter is ticking before the first transaction
    try:
        for attempt in range(2):  # the first time opens the pooled connection
            before = counter.turns
            async with database.session() as session, session.begin():
                session.add(InboundMessage(account="huamu", message_id=f"m{attempt}", room_id="r@chatroom",
                                           sender_id="wxid_a", sender_name="a", text="hi", kind="text",
                                           sent_at=datetime.now(UTC), received_at=datetime.now(UTC)))
            async with database.session() as session:
                assert (await session.execute(select(InboundMessage.id))).first() is not None
            async with sqlite_lane(database) as store:
                assert await store.insert_new(InboundMessage, []) == {}
            assert counter.turns == before
    finally:
        counter.stop()
    await database.close()
