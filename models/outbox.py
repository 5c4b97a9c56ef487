"""The outbox queries: enqueue inside the deciding transaction; claim and settle from the sender loop."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from models.tables import OutboxMessage, OutboxStatus

PRIORITY_URGENT = 0  # pings and replies to reports
PRIORITY_NORMAL = 5
PRIORITY_BULK = 9  # broadcasts


def enqueue(
    session: AsyncSession,
    *,
    account: str,
    conversation_id: str,
    is_room: bool,
    text: str,
    now: datetime,
    kind: str,
    priority: int = PRIORITY_NORMAL,
    incident_id: int | None = None,
    mentions: list[str] | None = None,
) -> OutboxMessage:
    row = OutboxMessage(
        account=account,
        conversation_id=conversation_id,
        is_room=is_room,
        text=text,
        mentions=mentions or [],
        priority=priority,
        kind=kind,
        incident_id=incident_id,
        status=OutboxStatus.pending,
        attempts=0,
        created_at=now,
    )
    session.add(row)
    return row


async def next_pending(session: AsyncSession, account: str, now: datetime, limit: int = 20) -> list[OutboxMessage]:
    """Pending rows in send order: urgent first, then oldest; rows waiting out a retry backoff are skipped."""
    query = (
        select(OutboxMessage)
        .where(OutboxMessage.account == account, OutboxMessage.status == OutboxStatus.pending)
        .order_by(OutboxMessage.priority, OutboxMessage.id)
        .limit(limit)
    )
    rows = (await session.scalars(query)).all()
    return [row for row in rows if row.not_before is None or row.not_before <= now]


async def mark_sent(session: AsyncSession, row_id: int, now: datetime, sent_message_id: str | None) -> None:
    await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == row_id)
        .values(status=OutboxStatus.sent, sent_at=now, sent_message_id=sent_message_id,
                attempts=OutboxMessage.attempts + 1)
    )


async def mark_attempt_failed(
    session: AsyncSession, row_id: int, error: str, retry_at: datetime | None
) -> None:
    """Record a failed attempt; with ``retry_at`` the row stays pending until then, without it it has failed."""
    values: dict[str, object] = {"attempts": OutboxMessage.attempts + 1, "last_error": error[:2000]}
    if retry_at is None:
        values["status"] = OutboxStatus.failed
    else:
        values["not_before"] = retry_at
    await session.execute(update(OutboxMessage).where(OutboxMessage.id == row_id).values(**values))
