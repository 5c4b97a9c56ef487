"""The two message stores (models/message_store.py) mean the same thing: the SQL written out for SQLite's
driver and SQLAlchemy Core store the same rows, find the same recent messages, and skip the same ids."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from models.db import Database
from models.message_store import CoreMessageStore, RecentlySaid, sqlite_lane
from models.migrate import ensure_current
from models.tables import EchoReceipt, InboundMessage

T0 = datetime(2026, 11, 28, 2, 0, 0, tzinfo=UTC)  # whole seconds: the case where formats most often differ
ACCOUNT = "huamu"


def message(message_id: str, sender: str, text: str, at: datetime, room: str | None = "jinxiu@chatroom",
            outcome: str | None = "quiet") -> dict[str, Any]:
    return {"account": ACCOUNT, "message_id": message_id, "room_id": room, "group_id": "jinxiu" if room else None,
            "sender_id": sender, "sender_name": "居民", "text": text, "kind": "text", "sent_at": at,
            "received_at": at + timedelta(milliseconds=5), "outcome": outcome}


BATCHES = [
    [message("a", "wxid_1", "今晚吃火锅吗", T0), message("b", "wxid_2", "孩子放学了", T0 + timedelta(microseconds=1)),
     message("p", "wxid_1", "私聊", T0, room=None, outcome=None)],
    [message("a", "wxid_1", "今晚吃火锅吗", T0),  # stored before: skipped
     message("c", "wxid_1", "今晚吃火锅吗", T0 + timedelta(seconds=30)),
     message("d", "wxid_3", "emoji 🙂 and \u200b zero width", T0 + timedelta(hours=1, microseconds=999_999))],
]
QUERIES = [
    RecentlySaid(ACCOUNT, ["wxid_1"], ["今晚吃火锅吗"], T0, T0),  # bounds equal to a stored instant
    RecentlySaid(ACCOUNT, ["wxid_1", "wxid_2"], ["今晚吃火锅吗", "孩子放学了"], T0 - timedelta(minutes=5),
                 T0 + timedelta(minutes=5)),
    RecentlySaid(ACCOUNT, ["wxid_1"], ["私聊"], T0 - timedelta(days=1), T0 + timedelta(days=1)),  # private: none
    RecentlySaid("other", ["wxid_1"], ["今晚吃火锅吗"], T0 - timedelta(days=1), T0 + timedelta(days=1)),
    RecentlySaid(ACCOUNT, ["wxid_3"], ["emoji 🙂 and \u200b zero width"], T0 + timedelta(hours=1),
                 T0 + timedelta(hours=1, seconds=1)),
]


async def _fresh(path: Path) -> Database:
    database = Database(f"sqlite+aiosqlite:///{path}")
    await ensure_current(database)
    return database


async def _stored(database: Database) -> list[tuple[Any, ...]]:
    async with database.session() as session:
        rows = (await session.scalars(select(InboundMessage).order_by(InboundMessage.id))).all()
        return [(r.id, r.account, r.message_id, r.room_id, r.group_id, r.sender_id, r.sender_name, r.text,
                 r.kind, r.sent_at, r.received_at, r.outcome) for r in rows]


async def test_the_driver_lane_and_sqlalchemy_core_store_and_find_the_same(tmp_path: Path) -> None:
    raw_db, core_db = await _fresh(tmp_path / "raw.db"), await _fresh(tmp_path / "core.db")
    for batch in BATCHES:
        async with sqlite_lane(raw_db) as raw_store:
            raw_ids = await raw_store.insert_new(InboundMessage, batch)
        async with core_db.engine.begin() as connection:
            core_ids = await CoreMessageStore(connection, sqlite=True).insert_new(InboundMessage, batch)
        assert raw_ids == core_ids
    assert sorted(raw_ids) == ["c", "d"]  # "a" was stored by the first batch
    stored = await _stored(raw_db)
    assert stored == await _stored(core_db)
    assert [row[9] for row in stored] == [m["sent_at"] for m in BATCHES[0] + BATCHES[1][1:]]  # read back exact

    for query in QUERIES:
        async with sqlite_lane(raw_db) as raw_store:
            found_raw = sorted(await raw_store.recently_said(query))
        async with core_db.engine.connect() as connection:
            found_core = sorted(await CoreMessageStore(connection, sqlite=True).recently_said(query))
        assert found_raw == found_core, query
    async with sqlite_lane(raw_db) as raw_store:
        assert [row[0] for row in await raw_store.recently_said(QUERIES[0])] == ["a"]
    await raw_db.close()
    await core_db.close()


async def test_a_large_batch_is_split_under_sqlites_variable_limit(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import models.message_store as store_module

    monkeypatch.setattr(store_module, "_SQLITE_MAX_VARIABLES", 50)  # 6 columns: 8 rows a statement
    database = await _fresh(tmp_path / "raw.db")
    receipts = [{"account": ACCOUNT, "message_id": f"echo-{n}", "conversation_id": "jinxiu@chatroom",
                 "text_hash": f"{n:064x}", "at": T0} for n in range(30)]
    async with sqlite_lane(database) as store:
        ids = await store.insert_new(EchoReceipt, receipts)
    assert sorted(ids) == sorted(r["message_id"] for r in receipts)
    assert len(set(ids.values())) == 30
    await database.close()


async def test_a_failed_lane_writes_nothing_and_raises_as_sqlalchemy_would(tmp_path: Path) -> None:
    database = await _fresh(tmp_path / "raw.db")
    with pytest.raises(RuntimeError):
        async with sqlite_lane(database) as store:
            await store.insert_new(InboundMessage, BATCHES[0])
            raise RuntimeError("the batch failed after its insert")
    with pytest.raises(OperationalError) as caught:
        async with sqlite_lane(database) as store:
            await store.insert_new(InboundMessage, BATCHES[1])
            store.connection.execute("INSERT INTO no_such_table VALUES (1)")
    assert isinstance(caught.value.orig, sqlite3.OperationalError)
    assert await _stored(database) == []
    await database.close()
