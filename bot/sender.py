"""The outbox sender: claims due rows in order (urgent first), paces them per account, sends, records.

Pacing is per channel: group messages at least ``group_interval`` (+ jitter) apart and under per-minute and
per-day caps; private messages ``private_interval`` apart. A private ping is not held up by a group message
waiting for its turn, and urgent rows (pings, replies to reports) always come before a running broadcast.
Waits use the station's clock, so tests drive pacing by moving a fake clock and waking the sender.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Protocol

from handlers.broadcasts import finish_if_done
from handlers.runtime import Station
from models import outbox
from models.tables import OutboxMessage

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
IDLE_CHECK_SECONDS = 5.0  # also picks up rows left by a crash or written by another process


class Transport(Protocol):
    def send(self, conversation_id: str, text: str, *, is_room: bool, mentions: list[str]) -> Awaitable[str | None]:
        ...

    def is_member(self, room_id: str) -> Awaitable[bool]:
        ...


def _reraise_if_cancelled() -> None:
    """grpclib turns a cancellation during a call into StreamTerminatedError; don't let that eat a stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def backoff(attempt: int) -> timedelta:
    return timedelta(seconds=min(2 ** attempt, 300))


class Pacer:
    """When the next group / private message may go. In memory: the caps are checked in the database."""

    def __init__(self, station: Station, rng: random.Random | None = None) -> None:
        self.station = station
        self.rng = rng or random.Random()
        self.next_group: datetime | None = None
        self.next_private: datetime | None = None

    async def waits(self, account: str, now: datetime) -> dict[tuple[bool, bool], float]:
        """Seconds until the next message may go, by (is_room, urgent): computed once per round, not per row."""
        settings = self.station.current.config.outbox
        private = max(0.0, (self.next_private - now).total_seconds()) if self.next_private else 0.0
        group = max(0.0, (self.next_group - now).total_seconds()) if self.next_group else 0.0
        async with self.station.db.session() as session:
            if await outbox.sent_since(session, account, True, now - timedelta(minutes=1)) >= settings.group_per_minute:
                group = max(group, 5.0)
            over_day = await outbox.sent_since(session, account, True, now - timedelta(days=1)) >= settings.group_per_day
        return {(False, True): private, (False, False): private, (True, True): group,
                (True, False): max(group, 60.0) if over_day else group}

    def sent(self, row: OutboxMessage, now: datetime) -> None:
        settings = self.station.current.config.outbox
        if row.is_room:
            jitter = self.rng.uniform(0, settings.group_jitter.total_seconds())
            self.next_group = now + settings.group_interval + timedelta(seconds=jitter)
        else:
            self.next_private = now + settings.private_interval


async def drain_once(station: Station, transport: Transport, pacer: Pacer) -> float | None:
    """Send everything that may go now; returns seconds until the next paced row may go (None: nothing waits)."""
    while True:
        now = station.now()
        async with station.db.session() as session:
            rows = await outbox.next_pending(session, station.id, now, limit=50)
        if not rows:
            return None
        waits = await pacer.waits(station.id, now)
        chosen, soonest = None, None
        for row in rows:
            wait = waits[(row.is_room, row.priority <= outbox.PRIORITY_URGENT)]
            if wait <= 0:
                chosen = row
                break
            soonest = wait if soonest is None else min(soonest, wait)
        if chosen is None:
            return soonest
        async with station.db.session() as session, session.begin():
            if not await outbox.claim(session, chosen.id, now):
                continue  # another process has it
        await _send(station, transport, pacer, chosen, now)


async def _send(station: Station, transport: Transport, pacer: Pacer, row: OutboxMessage, started: datetime) -> None:
    """Send one claimed row. Pacing counts from ``started`` (the claim), so a slow send does not stretch it."""
    try:
        if row.broadcast_id is not None and row.is_room and not await transport.is_member(row.conversation_id):
            async with station.db.session() as session, session.begin():
                await outbox.mark_attempt_failed(session, row.id, "the bot is no longer in this group", None,
                                                 skipped=True)
                await finish_if_done(session, station, row.broadcast_id)
            station.metrics.send_failed(row.kind, final=True)
            return
        message_id = await transport.send(row.conversation_id, row.text, is_room=row.is_room,
                                          mentions=list(row.mentions or []))
    except Exception as exc:
        _reraise_if_cancelled()
        attempt = row.attempts + 1
        retry_at = station.now() + backoff(attempt) if attempt < MAX_ATTEMPTS else None
        log.warning("outbox #%s to %s failed (attempt %s): %s", row.id, row.conversation_id, attempt, exc)
        async with station.db.session() as session, session.begin():
            await outbox.mark_attempt_failed(session, row.id, f"{type(exc).__name__}: {exc}", retry_at)
            if retry_at is None and row.broadcast_id is not None:
                await finish_if_done(session, station, row.broadcast_id)
        station.metrics.send_failed(row.kind, final=retry_at is None)
        return
    pacer.sent(row, started)
    now = station.now()
    async with station.db.session() as session, session.begin():
        await outbox.mark_sent(session, row.id, now, message_id)
        if row.broadcast_id is not None:
            await finish_if_done(session, station, row.broadcast_id)
    station.metrics.sent(row.kind)


async def run_sender(station: Station, transport: Transport, ready: asyncio.Event) -> None:
    """Forever: wait until connected, settle rows a dead sender left behind, then drain whenever new rows
    are announced, a paced row's turn comes, or periodically."""
    pacer = Pacer(station)
    while True:
        await ready.wait()
        station.outbox_ready.clear()
        wait: float | None = None
        try:
            async with station.db.session() as session, session.begin():
                settled, requeued = await outbox.reconcile_stale(session, station.id, station.now())
            if settled or requeued:
                log.info("outbox: %s interrupted sends confirmed by their echo, %s queued again", settled, requeued)
            wait = await drain_once(station, transport, pacer)
        except Exception:
            _reraise_if_cancelled()
            log.exception("outbox sender error; retrying")
        timeout = IDLE_CHECK_SECONDS if wait is None else min(max(wait, 0.01), IDLE_CHECK_SECONDS)
        try:
            await asyncio.wait_for(station.outbox_ready.wait(), timeout)
        except TimeoutError:
            pass
        _reraise_if_cancelled()  # Python 3.11's wait_for swallows a cancellation that lands with the wake-up
