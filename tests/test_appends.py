"""Timeline events and outbox rows written in bulk (``models.appends``): seen by the transaction's own queries,
written after the incident they belong to, one statement per table, and dropped with a rollback."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, func, select

from models.appends import add_incident_event
from models.db import Database
from models.outbox import enqueue
from models.tables import Incident, IncidentEvent, OutboxMessage

NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def an_incident(number: int) -> Incident:
    return Incident(id=number, station_id="huamu", room_id="jinxiu@chatroom", group_name="锦绣", route_id="fire",
                    category="fire", severity="P1", reporter_id="wxid_res_01", text="楼道闻到一股烟焦味",
                    created_at=NOW)


def count_inserts(database: Database) -> tuple[Counter[str], Any]:
    inserts: Counter[str] = Counter()

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO"):
            inserts[statement.split()[2]] += 1

    event.listen(database.engine.sync_engine, "before_cursor_execute", seen)
    return inserts, seen


async def test_an_incidents_rows_are_written_after_it_in_one_statement_per_table(database: Database) -> None:
    inserts, listener = count_inserts(database)
    async with database.session() as session, session.begin():
        incident = an_incident(1)
        session.add(incident)  # the events refer to it: it must be written first (PostgreSQL checks)
        for kind in ("reported", "replied", "pinged", "pinged"):
            add_incident_event(session, incident, kind, NOW, None, "")
        for officer in ("wxid_officer_wang", "wxid_officer_li"):
            enqueue(session, account="huamu", conversation_id=officer, is_room=False, text="请处理", now=NOW,
                    kind="ping", incident_id=incident.id)
    event.remove(database.engine.sync_engine, "before_cursor_execute", listener)
    assert inserts == {"incidents": 1, "incident_events": 1, "outbox": 1}
    async with database.session() as session:
        kinds = (await session.scalars(select(IncidentEvent.kind).order_by(IncidentEvent.id))).all()
        pings = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    assert kinds == ["reported", "replied", "pinged", "pinged"]
    assert [(p.conversation_id, p.status, p.attempts, p.mentions, p.incident_id) for p in pings] == [
        ("wxid_officer_wang", "pending", 0, [], 1), ("wxid_officer_li", "pending", 0, [], 1)]


async def test_the_transactions_own_queries_see_its_appended_rows(database: Database) -> None:
    async with database.session() as session, session.begin():
        incident = an_incident(2)
        session.add(incident)
        add_incident_event(session, incident, "replied", NOW)
        found = await session.scalar(select(func.count()).select_from(IncidentEvent)
                                     .where(IncidentEvent.incident_id == 2, IncidentEvent.kind == "replied"))
        assert found == 1
        add_incident_event(session, incident, "pinged", NOW)  # appended after a query: written at commit
    async with database.session() as session:
        assert (await session.scalars(select(IncidentEvent.kind).order_by(IncidentEvent.id))).all() == [
            "replied", "pinged"]


async def test_a_rollback_drops_the_appended_rows(database: Database) -> None:
    async with database.session() as session:
        with pytest.raises(RuntimeError):
            async with session.begin():
                incident = an_incident(3)
                session.add(incident)
                add_incident_event(session, incident, "reported", NOW)
                raise RuntimeError("the batch failed")
        async with session.begin():  # the same session's next transaction does not write them
            session.add(an_incident(4))
    async with database.session() as session:
        assert (await session.scalars(select(Incident.id))).all() == [4]
        assert (await session.scalar(select(func.count()).select_from(IncidentEvent))) == 0
