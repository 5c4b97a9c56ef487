"""``database.sqlite_sync``: full (every commit fsynced before it returns, SQLite checkpointing as usual) or
normal (commits not fsynced; the WAL checkpointed into the database file by a thread of its own,
``models/wal_checkpoint.py``), with what each promises checked on the real file."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from handlers.metrics import ConnectionFigures
from models import outbox, wal_checkpoint
from models.db import Database, SqliteSync
from models.tables import InboundMessage
from models.wal_checkpoint import WalCheckpointer
from tests.conftest import JINXIU, ROOT, WANG, Env

_ROW = {"account": "huamu", "room_id": "r@chatroom", "group_id": None, "sender_id": "wxid_a",
        "sender_name": "甲", "text": "楼道里有烟味", "kind": "text", "outcome": "quiet"}


async def _write(database: Database, *message_ids: str) -> None:
    now = datetime.now(UTC)
    async with database.engine.begin() as connection:
        await connection.execute(InboundMessage.__table__.insert(), [
            {**_ROW, "message_id": m, "sent_at": now, "received_at": now} for m in message_ids])


async def _pragmas(database: Database) -> tuple[int, int]:
    async with database.engine.connect() as connection:
        synchronous = (await connection.execute(text("PRAGMA synchronous"))).scalar_one()
        autocheckpoint = (await connection.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one()
    return synchronous, autocheckpoint


def _in_database_file_alone(path: Path, copy: Path) -> list[str]:
    """What a reader finds in the database file without its WAL: what a power cut would leave if the WAL's
    unsynced tail were lost."""
    shutil.copyfile(path, copy)
    reader = sqlite3.connect(copy)
    try:
        return [m for (m,) in reader.execute("SELECT message_id FROM inbound_messages ORDER BY message_id")]
    finally:
        reader.close()


async def test_normal_checkpoints_the_wal_into_the_file_on_its_own_thread(tmp_path: Path) -> None:
    path = tmp_path / "normal.db"
    database = Database(f"sqlite+aiosqlite:///{path}", sqlite_sync="normal")
    await database.create_schema()
    assert await _pragmas(database) == (1, 0)  # NORMAL; SQLite's own checkpoint inside a commit is off
    checkpointer = database.checkpointer
    assert checkpointer is not None and checkpointer.running

    await _write(database, "a", "b")
    # a checkpoint already running may have started before the commit: the one after it has the rows
    done = checkpointer.checkpoints
    assert await asyncio.to_thread(checkpointer.wait_until, lambda c: c.checkpoints >= done + 2, 10)
    assert _in_database_file_alone(path, tmp_path / "copy.db") == ["a", "b"]
    assert checkpointer.failures == 0

    await _write(database, "c")
    await database.close()  # stops the thread after a last checkpoint, the station's connection closed first
    assert not checkpointer.running
    assert _in_database_file_alone(path, tmp_path / "after-close.db") == ["a", "b", "c"]
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


async def test_commits_reach_the_disk_while_a_reader_holds_the_checkpoint_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "held.db"
    database = Database(f"sqlite+aiosqlite:///{path}", sqlite_sync="normal")
    await database.create_schema()
    await _write(database, "a")
    wal = path.with_name(path.name + "-wal")
    synced: list[int] = []  # inodes fsynced from Python (SQLite's own syncs happen in C, unseen here)
    real_fsync = wal_checkpoint.os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(wal_checkpoint.os, "fsync", fsync)
    reader = sqlite3.connect(path, isolation_level=None)  # another process's long read, at this snapshot
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM inbound_messages").fetchone() == (1,)
    checkpointer = database.checkpointer
    assert checkpointer is not None
    try:
        await _write(database, "b")  # frames the checkpoint may not copy while the reader needs the old page
        synced.clear()
        done = checkpointer.checkpoints
        assert await asyncio.to_thread(checkpointer.wait_until, lambda c: c.checkpoints >= done + 2, 10)
        assert wal.stat().st_ino in synced
    finally:
        reader.rollback()
        reader.close()
    await database.close()


class _GatedFsync:
    """``os.fsync`` for the checkpointer's thread, held until :meth:`open` (a disk taking its time)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        self.entered.set()
        self.gate.wait(10)
        self._real(fd)


@pytest.mark.parametrize("sqlite_sync", ["full", "normal"])
async def test_durable_waits_for_the_wal_fsync_only_when_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_sync: SqliteSync,
) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'sync.db'}", sqlite_sync=sqlite_sync)
    await database.create_schema()
    assert await _pragmas(database) == (1, 0)  # commits never fsync in the loop's thread
    await database.durable()  # nothing waits before the disk is slow
    fsync = _GatedFsync()
    monkeypatch.setattr(wal_checkpoint.os, "fsync", fsync)
    try:
        await _write(database, "a")
        waiting = asyncio.create_task(database.durable())
        assert await asyncio.to_thread(fsync.entered.wait, 10)  # the thread is in the fsync, held
        if sqlite_sync == "normal":
            await asyncio.wait_for(waiting, 10)  # normal does not wait for the disk
        else:
            checkpointer = database.checkpointer
            assert checkpointer is not None
            await asyncio.wait_for(checkpointer.parked.wait(), 10)
            assert not waiting.done()  # full waits, and the loop runs meanwhile
            fsync.gate.set()
            await asyncio.wait_for(waiting, 10)
    finally:
        fsync.gate.set()
    await database.close()


async def test_a_sync_asked_for_covers_what_was_committed_before_it_and_no_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'point.db'}", sqlite_sync="full")
    await database.create_schema()
    checkpointer = database.checkpointer
    assert checkpointer is not None
    fsync = _GatedFsync()
    monkeypatch.setattr(wal_checkpoint.os, "fsync", fsync)
    try:
        await _write(database, "a")
        on_disk = database.sync_now()  # the thread starts at once, without anyone awaiting
        assert await asyncio.to_thread(fsync.entered.wait, 10)
        await _write(database, "b")  # the caller goes on and commits more while the fsync is held
        assert not on_disk.done()
        fsync.gate.set()
        await asyncio.wait_for(on_disk, 10)  # done without waiting for a sync that covers "b"
        later = database.sync_now()
        assert not later.done()  # "b" is not on disk yet: a sync asked for now waits for its own fsync
        await asyncio.wait_for(later, 10)
        assert database.sync_now().done()  # nothing left to sync
    finally:
        fsync.gate.set()
    await database.close()


async def test_a_wait_that_arrives_just_after_its_sync_is_still_woken(tmp_path: Path) -> None:
    """The interleaving no timing can force: ``durable()`` saw the sync not yet done, and registered after the
    thread had finished that sync and looked for waiters. Nothing more is committed (a quiet station), so no
    further sync would come; the thread must still wake the wait."""
    path = tmp_path / "quiet.db"
    sqlite3.connect(path).close()
    checkpointer = WalCheckpointer(str(path), interval=3600)  # no periodic round to rescue it
    checkpointer.start()
    try:
        loop = asyncio.get_running_loop()
        checkpointer.committed()
        checkpointer._synced = 1  # the thread's sync covered it ...
        late: asyncio.Future[None] = loop.create_future()  # ... and then the wait arrived, as durable() adds it
        checkpointer._loop = loop
        checkpointer._waiters.append((1, late))
        checkpointer._wake.set()
        await asyncio.wait_for(late, 10)
    finally:
        checkpointer.stop()


async def test_a_reply_goes_out_only_once_its_report_is_on_disk(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    station = env.app.station
    assert station is not None and station.db.sqlite_sync == "full" and station.db.checkpointer is not None
    fsync = _GatedFsync()
    monkeypatch.setattr(wal_checkpoint.os, "fsync", fsync)
    start = env.sandbox.log.last_seq
    try:
        report = await env.sandbox.say("wxid_res_01", "楼道着火了", room=JINXIU)
        assert await env.outcome_of(report) == "incident:fire"  # stored (committed), not yet on disk
        await asyncio.wait_for(station.db.checkpointer.parked.wait(), 10)  # the sender waits for the fsync
        assert env.bot_messages(JINXIU, start) == []
        fsync.gate.set()
        await env.bot_says(JINXIU, start, "119")
    finally:
        fsync.gate.set()


async def test_the_fsync_of_what_caused_a_reply_starts_before_the_reply_is_claimed(
    env: Env, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sender asks for the sync before its claim, so the disk and the claim's transaction overlap."""
    station = env.app.station
    assert station is not None and station.db.checkpointer is not None
    claiming, let_claim = asyncio.Event(), asyncio.Event()
    claim_many = outbox.claim_many

    async def held_claim(*args: Any, **kwargs: Any) -> set[int]:
        claiming.set()
        await let_claim.wait()
        return await claim_many(*args, **kwargs)

    monkeypatch.setattr(outbox, "claim_many", held_claim)
    start = env.sandbox.log.last_seq
    try:
        await env.sandbox.say("wxid_res_01", "楼道着火了", room=JINXIU)
        await asyncio.wait_for(claiming.wait(), 10)
        await asyncio.wait_for(station.db.checkpointer.parked.wait(), 10)  # asked for while the claim is held
    finally:
        let_claim.set()
    await env.bot_says(JINXIU, start, "119")


async def test_a_failing_checkpoint_is_counted_and_retried_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    path.write_bytes(b"not a database" * 512)
    checkpointer = WalCheckpointer(str(path), interval=0.01)
    checkpointer.start()
    try:
        assert await asyncio.to_thread(checkpointer.wait_until, lambda c: c.failures >= 2, 10)  # kept trying
        assert checkpointer.checkpoints == 0
        path.unlink()
        repaired = sqlite3.connect(path)  # the file is usable again: checkpoints resume on their own
        repaired.execute("PRAGMA journal_mode=WAL")
        repaired.execute("CREATE TABLE t (x)")
        repaired.close()
        assert await asyncio.to_thread(checkpointer.wait_until, lambda c: c.checkpoints >= 1, 10)
    finally:
        checkpointer.stop()


async def test_a_file_that_cannot_be_opened_is_retried_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "not-yet" / "station.db"  # its directory does not exist (yet)
    checkpointer = WalCheckpointer(str(path), interval=0.01)
    checkpointer.start()
    try:
        assert await asyncio.to_thread(checkpointer.wait_until, lambda c: c.failures >= 2, 10)
        path.parent.mkdir()
        created = sqlite3.connect(path)
        created.execute("PRAGMA journal_mode=WAL")
        created.close()
        assert await asyncio.to_thread(checkpointer.wait_until, lambda c: c.checkpoints >= 1, 10)
    finally:
        checkpointer.stop()


@pytest.fixture
def default_config_text(request: pytest.FixtureRequest) -> str:
    """The shipped config.yaml, its one sqlite_sync line set to the test's parameter (default: as shipped)."""
    shipped = (ROOT / "config.yaml").read_text(encoding="utf-8")
    assert shipped.count("sqlite_sync: full") == 1
    return shipped.replace("sqlite_sync: full", f"sqlite_sync: {getattr(request, 'param', 'full')}")


@pytest.mark.parametrize("default_config_text", ["normal"], indirect=True)
async def test_a_bot_set_to_normal_answers_a_report_and_checkpoints_it(env: Env, tmp_path: Path) -> None:
    station = env.app.station
    assert station is not None and station.db.checkpointer is not None and station.db.checkpointer.started
    assert await _pragmas(station.db) == (1, 0)
    start = env.sandbox.log.last_seq
    await env.sandbox.say("wxid_res_01", "楼道着火了", room=JINXIU)
    await env.bot_says(JINXIU, start, "119")
    await env.bot_says(WANG, start, "警情")
    checkpointer = station.db.checkpointer
    done = checkpointer.checkpoints
    assert await asyncio.to_thread(checkpointer.wait_until, lambda c: c.checkpoints >= done + 2, 10)
    reader = sqlite3.connect(shutil.copyfile(tmp_path / "data" / "gonghao.db", tmp_path / "copy.db"))
    try:  # the report, its incident and the sent reply, in the database file itself
        assert reader.execute("SELECT count(*) FROM incidents").fetchone() == (1,)
        assert reader.execute("SELECT count(*) FROM outbox WHERE status = 'sent'").fetchone()[0] >= 2
    finally:
        reader.close()
    await station.metrics.refresh(station, ConnectionFigures())
    exposed = {sample.name: sample.value for family in text_string_to_metric_families(
        station.metrics.render().decode()) for sample in family.samples}
    assert exposed["gonghao_sqlite_wal_checkpoints"] >= done + 2
    assert exposed["gonghao_sqlite_wal_syncs"] >= 1
    assert exposed["gonghao_sqlite_wal_checkpoint_failures"] == 0
