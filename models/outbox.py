"""The outbox queries: enqueue inside the deciding transaction; claim, settle and reconcile from the sender.

A row is ``pending`` until a sender claims it (``sending``, conditional on it still being pending, so two
processes never both send it), then ``sent`` or, after its retries, ``failed``. A row left ``sending`` by a
process that died is settled from the echo receipts (the puppet service sends the bot's own messages back)
or else returned to ``pending``.

The puppet service sends the bot's own messages back as events (echo receipts). An attempt that ended
without a clear answer (no answer in time, a connection cut mid-call) may still have gone out; before such a
row is sent again its echo is looked for, so that a late acceptance is not followed by a second copy.

A claim is identified by its ``claimed_at``: a stale claim is only taken over ``STALE_CLAIM`` after it was
made, so any later claim of the same row has a later ``claimed_at``. Settling a claimed row is conditional
on that claim still holding, so a sender that was too slow cannot undo what another process did since.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any, NamedTuple, NotRequired, TypedDict, Unpack

from sqlalchemy import ColumnElement, bindparam, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from models.appends import append
from models.tables import BroadcastDelivery, EchoReceipt, OutboxMessage, OutboxStatus

PRIORITY_URGENT = 0  # pings and replies to reports
PRIORITY_NORMAL = 5
PRIORITY_BULK = 9  # broadcasts

_OUTBOX = OutboxMessage.__table__  # the sender's per-round statements skip the ORM's bulk-update machinery

STALE_CLAIM = timedelta(seconds=60)
ECHO_CLOCK_SLACK = timedelta(seconds=5)  # an echo is stamped when stored, a claim when made: allow for skew


_MENTION_PREFIX = re.compile("^(?:@[^\u2005]*\u2005)+")


def text_hash(text: str) -> str:
    """Identifies a message's text, ignoring the "@name\u2005" prefix the connection adds for mentions."""
    return hashlib.sha256(_MENTION_PREFIX.sub("", text).encode("utf-8")).hexdigest()


class Outgoing(TypedDict):
    """What a queued message says and where it goes."""

    account: str
    conversation_id: str
    is_room: bool
    text: str
    now: datetime
    kind: str
    priority: NotRequired[int]  # PRIORITY_NORMAL unless given
    incident_id: NotRequired[int | None]
    mentions: NotRequired[list[str] | None]
    broadcast_id: NotRequired[int | None]


def _row(message: Outgoing) -> dict[str, Any]:
    return {"account": message["account"], "conversation_id": message["conversation_id"],
            "is_room": message["is_room"], "text": message["text"], "mentions": message.get("mentions") or [],
            "priority": message.get("priority", PRIORITY_NORMAL), "kind": message["kind"],
            "incident_id": message.get("incident_id"), "broadcast_id": message.get("broadcast_id"),
            "status": OutboxStatus.pending, "attempts": 0, "created_at": message["now"]}


def enqueue(session: AsyncSession, **message: Unpack[Outgoing]) -> None:
    """Queue a message in the session's transaction (written in bulk with the others: ``models.appends``)."""
    append(session, _OUTBOX, _row(message))


def enqueue_row(session: AsyncSession, **message: Unpack[Outgoing]) -> OutboxMessage:
    """``enqueue`` for a caller that needs the row itself (its id once flushed): an ORM object."""
    row = OutboxMessage(**_row(message))
    session.add(row)
    return row


# The sender's statements are built once and bound per round: building them anew (and computing their cache
# keys) cost more than running them, a few dozen times a second under load.
_NEXT_PENDING = (
    select(OutboxMessage)
    .where(OutboxMessage.account == bindparam("account"), OutboxMessage.status == OutboxStatus.pending)
    .order_by(OutboxMessage.priority, OutboxMessage.id)
    .limit(bindparam("limit"))
)
_NEXT_PENDING_ELSEWHERE = _NEXT_PENDING.where(OutboxMessage.conversation_id.not_in(bindparam("busy", expanding=True)))
_CLAIM_MANY = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)), _OUTBOX.c.status == OutboxStatus.pending)
    .values(status=OutboxStatus.sending, claimed_at=bindparam("claim_at", type_=_OUTBOX.c.claimed_at.type))
    .returning(_OUTBOX.c.id)
)
_MARK_MANY_SENT: dict[int, Any] = {}  # by the number of rows: the CASE has one WHEN per row


def _mark_many_sent(rows: int) -> Any:
    if rows not in _MARK_MANY_SENT:
        _MARK_MANY_SENT[rows] = (
            update(_OUTBOX)
            .where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)), _OUTBOX.c.status == OutboxStatus.sending,
                   _OUTBOX.c.claimed_at == bindparam("claim_at", type_=_OUTBOX.c.claimed_at.type))
            .values(status=OutboxStatus.sent, sent_at=bindparam("sent_now", type_=_OUTBOX.c.sent_at.type),
                    attempts=_OUTBOX.c.attempts + 1,
                    sent_message_id=case(*[(_OUTBOX.c.id == bindparam(f"id_{k}"),
                                            bindparam(f"message_{k}", type_=_OUTBOX.c.sent_message_id.type))
                                           for k in range(rows)]))
            .returning(_OUTBOX.c.id)
        )
    return _MARK_MANY_SENT[rows]


async def next_pending(session: AsyncSession, account: str, now: datetime, limit: int = 20,
                       busy: Collection[str] = ()) -> list[OutboxMessage]:
    """Pending rows in send order: urgent first, then oldest; rows waiting out a retry backoff are skipped, and
    so are the ``busy`` conversations (a send to each is in flight)."""
    if busy:
        rows = (await session.scalars(_NEXT_PENDING_ELSEWHERE, {"account": account, "limit": limit,
                                                                "busy": list(busy)})).all()
    else:
        rows = (await session.scalars(_NEXT_PENDING, {"account": account, "limit": limit})).all()
    return [row for row in rows if row.not_before is None or row.not_before <= now]


async def claim(session: AsyncSession, row_id: int, now: datetime) -> bool:
    result = await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == row_id, OutboxMessage.status == OutboxStatus.pending)
        .values(status=OutboxStatus.sending, claimed_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


async def claim_many(session: AsyncSession, row_ids: list[int], now: datetime) -> set[int]:
    """Claim the rows still pending among ``row_ids`` (one statement); the ids this claim got."""
    if not row_ids:
        return set()
    result = await session.execute(_CLAIM_MANY, {"ids": row_ids, "claim_at": now})
    return set(result.scalars().all())


async def release(session: AsyncSession, row_ids: list[int], claimed_at: datetime) -> None:
    """Give back claimed rows that were not attempted (pending again, no attempt counted)."""
    if row_ids:
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id.in_(row_ids), OutboxMessage.status == OutboxStatus.sending,
                   OutboxMessage.claimed_at == claimed_at)
            .values(status=OutboxStatus.pending)
            .execution_options(synchronize_session=False)
        )


def _still_claimed(row_id: int, claimed_at: datetime | None) -> list[ColumnElement[bool]]:
    """The row, and (given the claim's time) only while it is still ``sending`` under that claim."""
    conditions = [OutboxMessage.id == row_id]
    if claimed_at is not None:
        conditions += [OutboxMessage.status == OutboxStatus.sending, OutboxMessage.claimed_at == claimed_at]
    return conditions


async def mark_sent(session: AsyncSession, row_id: int, now: datetime, sent_message_id: str | None, *,
                    claimed_at: datetime | None = None, broadcast: bool = True) -> bool:
    """Record a row as sent; returns whether it was. With ``claimed_at`` (what senders pass) only while the
    row is still ``sending`` under that claim; without it unconditionally (for fixtures and tools). A caller
    that knows the row is no broadcast copy passes ``broadcast=False`` and saves the delivery update."""
    result = await session.execute(
        update(OutboxMessage)
        .where(*_still_claimed(row_id, claimed_at))
        .values(status=OutboxStatus.sent, sent_at=now, sent_message_id=sent_message_id,
                attempts=OutboxMessage.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False  # settled or taken over by another process meanwhile: its record stands
    if not broadcast:
        return True
    await session.execute(
        update(BroadcastDelivery).where(BroadcastDelivery.outbox_id == row_id)
        .values(status="sent", sent_at=now, attempts=BroadcastDelivery.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    return True


async def mark_many_sent(session: AsyncSession, sent: dict[int, str | None], now: datetime, *,
                         claimed_at: datetime) -> set[int]:
    """``mark_sent`` for the rows of one claim that are no broadcast copies, in one statement (a round's
    replies and pings: one UPDATE per row was a third of the sender's time); the ids it recorded."""
    if not sent:
        return set()
    parameters: dict[str, Any] = {"ids": list(sent), "claim_at": claimed_at, "sent_now": now}
    for k, (row_id, message_id) in enumerate(sent.items()):
        parameters[f"id_{k}"], parameters[f"message_{k}"] = row_id, message_id
    result = await session.execute(_mark_many_sent(len(sent)), parameters)
    return set(result.scalars().all())


async def mark_attempt_failed(
    session: AsyncSession, row_id: int, error: str, retry_at: datetime | None, *, skipped: bool = False,
    claimed_at: datetime | None = None,
) -> bool:
    """Record a failed attempt; with ``retry_at`` the row is pending again from then, without it it has failed.
    Returns whether it was recorded: with ``claimed_at`` only while the row is still ``sending`` under that
    claim, so a late failure cannot send back to the queue a row another process has sent or claimed since."""
    values: dict[str, object] = {"attempts": OutboxMessage.attempts + 1, "last_error": error[:2000]}
    if retry_at is None:
        values["status"] = OutboxStatus.failed
    else:
        values["status"] = OutboxStatus.pending
        values["not_before"] = retry_at
    result = await session.execute(update(OutboxMessage).where(*_still_claimed(row_id, claimed_at))
                                   .values(**values).execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    delivery: dict[str, object] = {"attempts": BroadcastDelivery.attempts + 1, "reason": error[:2000]}
    if retry_at is None:
        delivery["status"] = "skipped" if skipped else "failed"
    await session.execute(update(BroadcastDelivery).where(BroadcastDelivery.outbox_id == row_id).values(**delivery)
                          .execution_options(synchronize_session=False))
    return True


async def find_echo(session: AsyncSession, row: OutboxMessage) -> EchoReceipt | None:
    """The echo of ``row`` since its last claim, if one came back: the same text in the same conversation,
    and not an echo some other row was already settled by (the same words go to a group more than once)."""
    since = (row.claimed_at or row.created_at) - ECHO_CLOCK_SLACK
    taken = select(OutboxMessage.id).where(OutboxMessage.account == row.account,
                                           OutboxMessage.sent_message_id == EchoReceipt.message_id)
    return (await session.scalars(
        select(EchoReceipt).where(EchoReceipt.account == row.account,
                                  EchoReceipt.conversation_id == row.conversation_id,
                                  EchoReceipt.text_hash == text_hash(row.text), EchoReceipt.at >= since,
                                  ~taken.exists())
        .order_by(EchoReceipt.id).limit(1))).first()


class Reconciled(NamedTuple):
    sent: int  # settled as sent from their echo
    requeued: int  # returned to pending


async def reconcile_stale(session: AsyncSession, account: str, now: datetime) -> Reconciled:
    """Settle rows a dead sender left ``sending``: sent if its echo came back, else pending again. Each step is
    conditional on the stale claim still holding (another process may be settling the same rows)."""
    stale = (await session.scalars(
        select(OutboxMessage).where(OutboxMessage.account == account, OutboxMessage.status == OutboxStatus.sending,
                                    OutboxMessage.claimed_at <= now - STALE_CLAIM))).all()
    sent = requeued = 0
    for row in stale:
        echo = await find_echo(session, row)
        if echo is not None:
            if await mark_sent(session, row.id, echo.at, echo.message_id, claimed_at=row.claimed_at,
                               broadcast=row.broadcast_id is not None):
                sent += 1
        else:
            result = await session.execute(update(OutboxMessage).where(*_still_claimed(row.id, row.claimed_at))
                                           .values(status=OutboxStatus.pending)
                                           .execution_options(synchronize_session=False))
            requeued += result.rowcount  # type: ignore[attr-defined]
    return Reconciled(sent, requeued)


async def sent_since(session: AsyncSession, account: str, is_room: bool, since: datetime) -> int:
    return int(await session.scalar(
        select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.account == account, OutboxMessage.is_room == is_room,
            OutboxMessage.status == OutboxStatus.sent, OutboxMessage.sent_at >= since)) or 0)


async def last_sent_at(session: AsyncSession, account: str, is_room: bool) -> datetime | None:
    return await session.scalar(
        select(func.max(OutboxMessage.sent_at)).where(
            OutboxMessage.account == account, OutboxMessage.is_room == is_room,
            OutboxMessage.status == OutboxStatus.sent))
