"""Rows that are only ever added, written in bulk: timeline events and outbox messages.

A report writes about seven of them in its transaction (the incident's timeline, the reply, the pings).
As ORM objects each was an object to track and an ``INSERT … RETURNING`` of its own (SQLite cannot return
a batch's ids in order, so the ORM sends them one by one): a third of a report's CPU. Nobody needs their
ids in the transaction that writes them, so they are collected on the session and written with one
``executemany`` per table: before the session runs any other statement (queries in the same transaction
see them, as with autoflush) and before it commits. A rollback drops them with the rest of the
transaction.

The session's ORM objects are flushed first: these rows refer to incidents and tickets written in the
same transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, event, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from models.tables import Incident, IncidentEvent
from models.tickets import Ticket, TicketEvent

_KEY = "gonghao_appends"


def append(session: AsyncSession | Session, table: Table, row: dict[str, Any]) -> None:
    """Add ``row`` to ``table`` in the session's transaction (written at the latest when it commits). Every
    row of one table must name the same columns."""
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    sync.info.setdefault(_KEY, {}).setdefault(table, []).append(row)


def add_incident_event(session: AsyncSession | Session, incident: Incident, kind: str, at: datetime,
                       actor: str | None = None, detail: str = "") -> None:
    """One line of an incident's timeline."""
    append(session, _INCIDENT_EVENTS, {"incident_id": incident.id, "at": at, "kind": kind, "actor": actor,
                                       "detail": detail})


def add_ticket_event(session: AsyncSession | Session, ticket: Ticket, kind: str, at: datetime,
                     actor: str | None = None, detail: str = "") -> None:
    """One line of an inquiry ticket's timeline."""
    append(session, _TICKET_EVENTS, {"ticket_id": ticket.id, "at": at, "kind": kind, "actor": actor,
                                     "detail": detail})


_INCIDENT_EVENTS: Table = IncidentEvent.__table__  # type: ignore[assignment]
_TICKET_EVENTS: Table = TicketEvent.__table__  # type: ignore[assignment]


def _write(session: Session) -> None:
    pending: dict[Table, list[dict[str, Any]]] | None = session.info.pop(_KEY, None)
    if not pending:
        return
    session.flush()
    for table, rows in pending.items():
        session.execute(insert(table), rows)


@event.listens_for(Session, "do_orm_execute")
def _before_any_statement(state: ORMExecuteState) -> None:
    _write(state.session)


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    _write(session)


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the transaction is over (a commit wrote them; a rollback drops them)
        session.info.pop(_KEY, None)
