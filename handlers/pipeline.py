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

from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config.schema import GroupConfig
from handlers import inquiries
from handlers.commands import handle_private
from handlers.inbound import Inbound
from handlers.incidents import report
from handlers.inquiries import Detection
from handlers.routing import Decision
from handlers.runtime import ConfigVersion, Station
from models.message_store import CoreMessageStore, MessageStore, RecentlySaid, sqlite_lane
from models.outbox import text_hash
from models.tables import EchoReceipt, InboundMessage

log = logging.getLogger(__name__)

_MESSAGES = InboundMessage.__table__
_SET_OUTCOME = (
    update(_MESSAGES).where(_MESSAGES.c.id.in_(bindparam("ids", expanding=True)))
    .values(outcome=bindparam("outcome"))
)


def _scrubbed(inbound: Inbound) -> Inbound:
    if "\x00" in inbound.text or "\x00" in inbound.sender_name:
        # PostgreSQL text cannot hold NUL; it carries no meaning in chat anyway.
        return replace(inbound, text=inbound.text.replace("\x00", ""),
                       sender_name=inbound.sender_name.replace("\x00", ""))
    return inbound


async def _repeated_texts(store: MessageStore, live: ConfigVersion, batch: Sequence[Inbound]) -> set[int]:
    """Positions in ``batch`` of group messages repeating what the same sender said in the same group within
    the window under another id (WeChat re-sends under new ids), whether stored before or earlier in this
    batch. Private messages are exempt: an officer answers "收到" to one incident after another."""
    window = live.config.intake.duplicate_window
    candidates = [(k, m) for k, m in enumerate(batch) if window and m.text and m.room_id is not None]
    if not candidates:
        return set()
    query = RecentlySaid(
        account=batch[0].account, senders=sorted({m.sender_id for _, m in candidates}),
        texts=sorted({m.text for _, m in candidates}),
        earliest=min(m.sent_at for _, m in candidates) - window,
        latest=max(m.sent_at for _, m in candidates) + window,
    )
    said: dict[tuple[str, str | None, str], list[tuple[str, datetime]]] = defaultdict(list)
    for message_id, sender_id, room_id, text, sent_at in await store.recently_said(query):
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


_OWN = _Plan("self")


@dataclass(frozen=True)
class Prepared:
    """A message with what it needs, decided (no database) under one config version."""

    inbound: Inbound
    live: ConfigVersion
    group: GroupConfig | None
    plan: _Plan

    @property
    def pressing(self) -> bool:
        """Needs more than its row: a report, a question, a command. The intake does not hold these back
        to batch them with chit-chat."""
        return self.plan.outcome is None


def prepare(station: Station, inbound: Inbound) -> Prepared:
    inbound = _scrubbed(inbound)
    live = station.current
    if inbound.is_self:
        return Prepared(inbound, live, None, _OWN)
    group = live.group_for(inbound.room_id, inbound.room_topic) if inbound.room_id else None
    try:
        plan = _plan(live, inbound, group)
    except Exception:  # a bug in routing must not lose the message: it is stored, marked, and logged
        log.exception("could not plan message %s", inbound.message_id)
        plan = _Plan("error")
    return Prepared(inbound, live, group, plan)


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
    Raises on any failure, with nothing of the batch written."""
    return await handle_prepared(station, [prepare(station, m) for m in batch])


async def handle_prepared(station: Station, batch: Sequence[Prepared]) -> list[str]:
    """``handle_batch`` for messages the intake prepared as they arrived.

    A batch of chit-chat and echoes only (the common case) needs no ORM: on SQLite it runs on the driver's
    connection (``sqlite_lane``), elsewhere on a plain SQLAlchemy connection; two statements either way.
    """
    if not batch:
        return []
    live = station.current  # one config version for the whole batch, even if a reload lands meanwhile
    batch = [p if p.live is live else prepare(station, p.inbound) for p in batch]
    now = station.now()
    if not any(p.pressing for p in batch):
        if station.db.is_sqlite:
            async with sqlite_lane(station.db) as store:
                return await _store(store, None, station, live, batch, now, [])
        async with station.db.engine.begin() as connection:
            store = CoreMessageStore(connection, sqlite=False)
            return await _store(store, None, station, live, batch, now, [])
    opened: list[tuple[str, int]] = []
    async with station.db.session() as session, session.begin():
        store = CoreMessageStore(session, sqlite=station.db.is_sqlite)
        outcomes = await _store(store, session, station, live, batch, now, opened)
    station.outbox_ready.set()  # replies, pings, tickets may have been queued
    for category, pings in opened:
        station.metrics.incident_opened(category, pings)
    return outcomes


async def _store(
    store: MessageStore, session: AsyncSession | None, station: Station, live: ConfigVersion,
    batch: list[Prepared], now: datetime, opened: list[tuple[str, int]],
) -> list[str]:
    """Store the batch once and carry out the plans (``session`` is given whenever a plan needs one)."""
    outcomes = [""] * len(batch)
    # Our own sends coming back: the receipts that settle outbox rows whose sender died mid-send.
    echoes = [p.inbound for p in batch if p.inbound.is_self and (p.inbound.room_id or p.inbound.to_id)]
    if echoes:
        await store.insert_new(EchoReceipt, [
            {"account": m.account, "message_id": m.message_id, "conversation_id": m.room_id or m.to_id,
             "text_hash": text_hash(m.text), "at": now} for m in echoes])
    for k, prepared in enumerate(batch):
        if prepared.inbound.is_self:
            outcomes[k] = "self"
    others = [k for k, p in enumerate(batch) if not p.inbound.is_self]
    repeated = await _repeated_texts(store, live, [batch[k].inbound for k in others])
    rows: list[dict[str, Any]] = []
    first_of: dict[str, int] = {}
    for position, k in enumerate(others):
        message, group = batch[k].inbound, batch[k].group
        if position in repeated:
            outcomes[k] = "duplicate_text"
            continue
        if message.message_id in first_of:
            outcomes[k] = "duplicate"  # the same id twice in one batch
            continue
        first_of[message.message_id] = k
        rows.append({
            "account": message.account, "message_id": message.message_id, "room_id": message.room_id,
            "group_id": group.id if group else None, "sender_id": message.sender_id,
            "sender_name": message.sender_name, "text": message.text, "kind": message.kind,
            "sent_at": message.sent_at, "received_at": now, "outcome": batch[k].plan.outcome,
        })
    stored = await store.insert_new(InboundMessage, rows) if rows else {}
    by_outcome: dict[str, list[int]] = defaultdict(list)
    for message_id, k in first_of.items():
        row_id = stored.get(message_id)
        if row_id is None:
            outcomes[k] = "duplicate"
            continue
        prepared = batch[k]
        if prepared.plan.outcome is not None:
            outcomes[k] = prepared.plan.outcome  # stored with the row
            continue
        assert session is not None  # handle_prepared gives a session whenever a plan has no outcome
        outcomes[k] = await _decide(session, live, station, prepared.inbound, prepared.group, prepared.plan,
                                    now, row_id, opened)
        by_outcome[outcomes[k][:64]].append(row_id)
    for outcome, row_ids in by_outcome.items():
        assert session is not None
        await session.execute(_SET_OUTCOME, {"ids": row_ids, "outcome": outcome})
    return outcomes


async def handle(station: Station, inbound: Inbound) -> str:
    """Process one message in a transaction of its own; returns what happened."""
    return (await handle_batch(station, [inbound]))[0]
