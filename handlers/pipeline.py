"""One inbound message end to end: drop our own echoes, store once, then route or obey.

Everything one message causes (the stored message, an incident and its timeline, every reply and ping)
is written in one transaction; the outbox sender delivers afterwards. A message id seen before, even
from another process sharing the database, changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from handlers import inquiries
from handlers.commands import handle_private
from handlers.inbound import Inbound
from handlers.incidents import report
from handlers.runtime import ConfigVersion, Station
from models.outbox import text_hash
from models.tables import EchoReceipt, InboundMessage

log = logging.getLogger(__name__)


async def _insert_once(session: AsyncSession, station: Station, model: type[Any], values: dict[str, Any]) -> Any:
    """INSERT … ON CONFLICT (account, message_id) DO NOTHING; the new row's id, or None if it existed."""
    insert = sqlite_insert if station.db.is_sqlite else pg_insert
    statement = (
        insert(model).values(**values)
        .on_conflict_do_nothing(index_elements=["account", "message_id"])
        .returning(model.id)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def _store_once(session: AsyncSession, station: Station, inbound: Inbound, group_id: str | None) -> int | None:
    """Insert the message; ``None`` when this (account, message id) was stored before."""
    values = {
        "account": inbound.account,
        "message_id": inbound.message_id,
        "room_id": inbound.room_id,
        "group_id": group_id,
        "sender_id": inbound.sender_id,
        "sender_name": inbound.sender_name,
        "text": inbound.text,
        "kind": inbound.kind,
        "sent_at": inbound.sent_at,
        "received_at": station.now(),
    }
    return await _insert_once(session, station, InboundMessage, values)


async def _repeated_text(session: AsyncSession, live: ConfigVersion, inbound: Inbound) -> bool:
    """The same sender saying the same text in the same group within the window, under another id.
    (Private messages are exempt: an officer answers "收到" to one incident after another.)"""
    window = live.config.intake.duplicate_window
    if not window or not inbound.text or inbound.room_id is None:
        return False
    query = select(InboundMessage.id).where(
        InboundMessage.account == inbound.account, InboundMessage.sender_id == inbound.sender_id,
        InboundMessage.text == inbound.text, InboundMessage.message_id != inbound.message_id,
        InboundMessage.sent_at >= inbound.sent_at - window, InboundMessage.sent_at <= inbound.sent_at + window,
    )
    query = query.where(InboundMessage.room_id == inbound.room_id)
    return (await session.scalars(query.limit(1))).first() is not None


async def handle(station: Station, inbound: Inbound) -> str:
    """Process one message; returns what happened (for logs and tests)."""
    if "\x00" in inbound.text or "\x00" in inbound.sender_name:
        # PostgreSQL text cannot hold NUL; it carries no meaning in chat anyway.
        inbound = replace(inbound, text=inbound.text.replace("\x00", ""),
                          sender_name=inbound.sender_name.replace("\x00", ""))
    if inbound.is_self:
        # Our own send coming back: the receipt that settles an outbox row if its sender died mid-send.
        conversation = inbound.room_id or inbound.to_id
        if conversation:
            async with station.db.session() as session, session.begin():
                await _insert_once(session, station, EchoReceipt, {
                    "account": inbound.account, "message_id": inbound.message_id, "conversation_id": conversation,
                    "text_hash": text_hash(inbound.text), "at": station.now()})
        return "self"
    live = station.current  # one config version for the whole message, even if a reload lands meanwhile
    group = live.group_for(inbound.room_id, inbound.room_topic) if inbound.room_id else None
    now = station.now()
    opened: list[tuple[str, int]] = []
    async with station.db.session() as session, session.begin():
        if await _repeated_text(session, live, inbound):
            return "duplicate_text"
        row_id = await _store_once(session, station, inbound, group.id if group else None)
        if row_id is None:
            return "duplicate"
        if inbound.is_private:
            outcome = await handle_private(session, live, inbound, now, station.peers)
        elif inbound.kind != "text" or not inbound.text.strip():
            outcome = "not_text"
        elif (answered := await inquiries.on_officer_room_message(session, live, inbound, group, now)) is not None:
            outcome = answered  # an officer answering a resident's question in the group
        elif inbound.sender_id in live.officers_by_wechat:
            # Officers post warnings and safety advice in their groups ("冒充客服退款的都是诈骗，不要转账");
            # those are prevention posts, not reports.
            outcome = "officer_post"
        else:
            decision = live.router.classify(inbound.text, group.id if group else None, inbound.sent_at)
            if not decision.matches:
                # not a report; perhaps a question for the police (answered or acknowledged, and ticketed)
                outcome = await inquiries.on_room_message(session, live, inbound, group, now, row_id) or "quiet"
            else:
                results = []
                for position, match in enumerate(decision.matches):
                    incident, joined = await report(
                        session, live, inbound, group, match, now, row_id, reply_to_group=position == 0
                    )
                    log.info("incident #%s %s %s (%s) in %s", incident.id, "joined" if joined else "opened",
                             match.route.id, match.route.severity, incident.group_name)
                    results.append(("joined:" if joined else "") + match.route.id)
                    if not joined:
                        opened.append((incident.category, len(incident.assigned_officers or [])))
                outcome = "incident:" + ",".join(results)
        await session.execute(
            update(InboundMessage).where(InboundMessage.id == row_id).values(outcome=outcome[:64])
        )
    station.outbox_ready.set()
    for category, pings in opened:
        station.metrics.incident_opened(category, pings)
    return outcome
