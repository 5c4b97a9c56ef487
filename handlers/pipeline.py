"""Inbound messages end to end: drop our own echoes, store each once, then route or obey.

Messages are handled in batches: whatever arrived while the previous batch was being written goes in one
transaction, so that under load the per-transaction cost (the commit, SQLite's single writer) is paid once
per batch and the quiet majority of chit-chat costs two statements per batch, not four per message. At
low load a batch is one message, so nothing waits for company.

Everything a batch causes (the stored messages, incidents and their timelines, every reply and ping) is
written in that one transaction; the outbox sender delivers afterwards. A message id seen before, even
from another process sharing the database, changes nothing. When a batch fails, the caller handles its
messages one by one (``handle``), so one poisonous message costs only itself.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from bot.config.schema import GroupConfig
from handlers import inquiries
from handlers.commands import handle_private
from handlers.inbound import Inbound
from handlers.incidents import report
from handlers.inquiries import Detection
from handlers.routing import Decision
from handlers.runtime import ConfigVersion, Station
from models.outbox import text_hash
from models.tables import EchoReceipt, InboundMessage

log = logging.getLogger(__name__)

# The hot path's statements, built once: Core on the tables (no ORM work per statement) with bound
# parameters, so that each batch only binds values; building the expressions anew cost more than running them.
_MESSAGES = InboundMessage.__table__
_RECENTLY_SAID = select(
    _MESSAGES.c.message_id, _MESSAGES.c.sender_id, _MESSAGES.c.room_id, _MESSAGES.c.text, _MESSAGES.c.sent_at
).where(
    _MESSAGES.c.account == bindparam("account"),
    _MESSAGES.c.sender_id.in_(bindparam("senders", expanding=True)),
    _MESSAGES.c.sent_at >= bindparam("earliest"), _MESSAGES.c.sent_at <= bindparam("latest"),
    _MESSAGES.c.text.in_(bindparam("texts", expanding=True)),
    _MESSAGES.c.room_id.is_not(None),
)
_SET_OUTCOME = (
    update(_MESSAGES).where(_MESSAGES.c.id.in_(bindparam("ids", expanding=True)))
    .values(outcome=bindparam("outcome"))
)
_INSERT_NEW: dict[tuple[str, bool], Any] = {}


def _insert_new(model: type[Any], sqlite: bool) -> Any:
    """INSERT … ON CONFLICT (account, message_id) DO NOTHING RETURNING id, message_id, per table and dialect."""
    key = (model.__tablename__, sqlite)
    if key not in _INSERT_NEW:
        table = model.__table__
        insert = sqlite_insert if sqlite else pg_insert
        _INSERT_NEW[key] = (
            insert(table).on_conflict_do_nothing(index_elements=["account", "message_id"])
            .returning(table.c.id, table.c.message_id)
        )
    return _INSERT_NEW[key]


async def _store_new(db: AsyncSession | AsyncConnection, station: Station, model: type[Any],
                     rows: list[dict[str, Any]]) -> dict[str, int]:
    """INSERT … ON CONFLICT (account, message_id) DO NOTHING for every row; the new rows' ids by message id
    (a message id stored before, by us or by another process, is absent).

    Core on the table, executemany: SQLAlchemy compiles it once and sends multi-row INSERTs
    ("insertmanyvalues"); ``insert(model).values(list)`` was compiled anew for every batch."""
    result = await db.execute(_insert_new(model, station.db.is_sqlite), rows)
    return {message_id: row_id for row_id, message_id in result.all()}


def _scrubbed(inbound: Inbound) -> Inbound:
    if "\x00" in inbound.text or "\x00" in inbound.sender_name:
        # PostgreSQL text cannot hold NUL; it carries no meaning in chat anyway.
        return replace(inbound, text=inbound.text.replace("\x00", ""),
                       sender_name=inbound.sender_name.replace("\x00", ""))
    return inbound


async def _repeated_texts(db: AsyncSession | AsyncConnection, live: ConfigVersion,
                          batch: Sequence[Inbound]) -> set[int]:
    """Positions in ``batch`` of group messages repeating what the same sender said in the same group within
    the window under another id (WeChat re-sends under new ids), whether stored before or earlier in this
    batch. Private messages are exempt: an officer answers "收到" to one incident after another."""
    window = live.config.intake.duplicate_window
    candidates = [(k, m) for k, m in enumerate(batch) if window and m.text and m.room_id is not None]
    if not candidates:
        return set()
    earliest = min(m.sent_at for _, m in candidates) - window
    latest = max(m.sent_at for _, m in candidates) + window
    parameters = {"account": batch[0].account, "senders": sorted({m.sender_id for _, m in candidates}),
                  "texts": sorted({m.text for _, m in candidates}), "earliest": earliest, "latest": latest}
    said: dict[tuple[str, str | None, str], list[tuple[str, datetime]]] = defaultdict(list)
    for message_id, sender_id, room_id, text, sent_at in (await db.execute(_RECENTLY_SAID, parameters)).all():
        said[(sender_id, room_id, text)].append((message_id, sent_at))
    repeated: set[int] = set()
    for k, message in candidates:
        key = (message.sender_id, message.room_id, message.text)
        if any(other_id != message.message_id and abs(sent_at - message.sent_at) <= window
               for other_id, sent_at in said[key]):
            repeated.add(k)
        else:
            said[key].append((message.message_id, message.sent_at))  # a later repeat in this batch finds it
    return repeated


@dataclass(frozen=True)
class _Plan:
    """What a message needs, decided before it is stored: most chat needs nothing more than its row."""

    outcome: str | None  # final when nothing else is needed (written with the row)
    decision: Decision | None = None  # a report: routes matched
    inquiry: Detection | None = None  # a question for the police


def _plan(live: ConfigVersion, inbound: Inbound, group: GroupConfig | None) -> _Plan:
    if inbound.is_private:
        return _Plan(None)  # officers' commands, residents' private words
    if inbound.kind != "text" or not inbound.text.strip():
        return _Plan("not_text")
    if inbound.sender_id in live.officers_by_wechat:
        return _Plan(None)  # an answer to a resident's question, or a prevention post
    decision = live.router.classify(inbound.text, group.id if group else None, inbound.sent_at)
    if decision.matches:
        return _Plan(None, decision=decision)
    inquiry = inquiries.room_inquiry(live, inbound, group)
    return _Plan("quiet") if inquiry is None else _Plan(None, inquiry=inquiry)


async def _decide(session: AsyncSession, live: ConfigVersion, station: Station, inbound: Inbound,
                  group: GroupConfig | None, plan: _Plan, now: datetime, row_id: int,
                  opened: list[tuple[str, int]]) -> str:
    """What one stored message causes beyond its row, written in the batch's transaction; the outcome."""
    if inbound.is_private:
        return await handle_private(session, live, inbound, now, station.peers)
    if inbound.sender_id in live.officers_by_wechat:
        answered = await inquiries.on_officer_room_message(session, live, inbound, group, now)
        # Officers post warnings and safety advice in their groups ("冒充客服退款的都是诈骗，不要转账");
        # those are prevention posts, not reports.
        return answered or "officer_post"
    if plan.decision is None:
        # not a report: a question for the police (answered or acknowledged, and ticketed)
        return await inquiries.on_room_message(session, live, inbound, group, now, row_id, plan.inquiry) or "quiet"
    results = []
    for position, match in enumerate(plan.decision.matches):
        incident, joined = await report(
            session, live, inbound, group, match, now, row_id, reply_to_group=position == 0
        )
        log.info("incident #%s %s %s (%s) in %s", incident.id, "joined" if joined else "opened",
                 match.route.id, match.route.severity, incident.group_name)
        results.append(("joined:" if joined else "") + match.route.id)
        if not joined:
            opened.append((incident.category, len(incident.assigned_officers or [])))
    return "incident:" + ",".join(results)


async def handle_batch(station: Station, batch: Sequence[Inbound]) -> list[str]:
    """Process messages in one transaction; what happened to each (for logs, metrics and tests), in order.
    Raises on any failure, with nothing of the batch written.

    Each message's plan is made first (no database). A batch of chit-chat and echoes only (the common case)
    runs on a plain connection: two or three Core statements, without the ORM session's work per statement.
    """
    batch = [_scrubbed(m) for m in batch]
    if not batch:
        return []
    live = station.current  # one config version for the whole batch, even if a reload lands meanwhile
    now = station.now()
    groups = {k: live.group_for(m.room_id, m.room_topic) if m.room_id else None
              for k, m in enumerate(batch) if not m.is_self}
    plans = {k: _plan(live, batch[k], group) for k, group in groups.items()}
    if all(plan.outcome is not None for plan in plans.values()):
        async with station.db.engine.begin() as connection:
            return await _store(connection, station, live, batch, groups, plans, now, [])
    opened: list[tuple[str, int]] = []
    async with station.db.session() as session, session.begin():
        outcomes = await _store(session, station, live, batch, groups, plans, now, opened)
    station.outbox_ready.set()  # replies, pings, tickets may have been queued
    for category, pings in opened:
        station.metrics.incident_opened(category, pings)
    return outcomes


async def _store(
    db: AsyncSession | AsyncConnection, station: Station, live: ConfigVersion, batch: list[Inbound],
    groups: dict[int, GroupConfig | None], plans: dict[int, _Plan], now: datetime, opened: list[tuple[str, int]],
) -> list[str]:
    """Store the batch once and carry out the plans (``db`` is a session whenever a plan needs one)."""
    outcomes = [""] * len(batch)
    # Our own sends coming back: the receipts that settle outbox rows whose sender died mid-send.
    echoes = [m for m in batch if m.is_self and (m.room_id or m.to_id)]
    if echoes:
        await _store_new(db, station, EchoReceipt, [
            {"account": m.account, "message_id": m.message_id, "conversation_id": m.room_id or m.to_id,
             "text_hash": text_hash(m.text), "at": now} for m in echoes])
    for k, message in enumerate(batch):
        if message.is_self:
            outcomes[k] = "self"
    others = [k for k, m in enumerate(batch) if not m.is_self]
    repeated = await _repeated_texts(db, live, [batch[k] for k in others])
    rows: list[dict[str, Any]] = []
    first_of: dict[str, int] = {}
    for position, k in enumerate(others):
        message = batch[k]
        if position in repeated:
            outcomes[k] = "duplicate_text"
            continue
        if message.message_id in first_of:
            outcomes[k] = "duplicate"  # the same id twice in one batch
            continue
        first_of[message.message_id] = k
        group = groups[k]
        rows.append({
            "account": message.account, "message_id": message.message_id, "room_id": message.room_id,
            "group_id": group.id if group else None, "sender_id": message.sender_id,
            "sender_name": message.sender_name, "text": message.text, "kind": message.kind,
            "sent_at": message.sent_at, "received_at": now, "outcome": plans[k].outcome,
        })
    stored = await _store_new(db, station, InboundMessage, rows) if rows else {}
    by_outcome: dict[str, list[int]] = defaultdict(list)
    for message_id, k in first_of.items():
        row_id = stored.get(message_id)
        if row_id is None:
            outcomes[k] = "duplicate"
            continue
        planned = plans[k].outcome
        if planned is not None:
            outcomes[k] = planned  # stored with the row
            continue
        assert isinstance(db, AsyncSession)  # handle_batch gives a session whenever a plan has no outcome
        outcomes[k] = await _decide(db, live, station, batch[k], groups[k], plans[k], now, row_id, opened)
        by_outcome[outcomes[k][:64]].append(row_id)
    for outcome, row_ids in by_outcome.items():
        await db.execute(_SET_OUTCOME, {"ids": row_ids, "outcome": outcome})
    return outcomes


async def handle(station: Station, inbound: Inbound) -> str:
    """Process one message in a transaction of its own; returns what happened."""
    return (await handle_batch(station, [inbound]))[0]
