"""The outbox sender loop: delivers pending rows in order, records each result, retries with backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import timedelta
from typing import Protocol

from handlers.runtime import Station
from models import outbox

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
IDLE_CHECK_SECONDS = 5.0  # also picks up rows left by a crash or written by another process


class Transport(Protocol):
    def send(self, conversation_id: str, text: str, *, is_room: bool, mentions: list[str]) -> Awaitable[str | None]:
        ...


def _reraise_if_cancelled() -> None:
    """grpclib turns a cancellation during a call into StreamTerminatedError; don't let that eat a stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def backoff(attempt: int) -> timedelta:
    return timedelta(seconds=min(2 ** attempt, 300))


async def drain_once(station: Station, transport: Transport) -> int:
    """Send what is due now; returns how many rows were settled."""
    settled = 0
    while True:
        async with station.db.session() as session:
            rows = await outbox.next_pending(session, station.id, station.now(), limit=20)
        if not rows:
            return settled
        for row in rows:
            try:
                message_id = await transport.send(row.conversation_id, row.text, is_room=row.is_room,
                                                  mentions=list(row.mentions or []))
            except Exception as exc:
                _reraise_if_cancelled()
                attempt = row.attempts + 1
                retry_at = station.now() + backoff(attempt) if attempt < MAX_ATTEMPTS else None
                log.warning("outbox #%s to %s failed (attempt %s): %s", row.id, row.conversation_id, attempt, exc)
                async with station.db.session() as session, session.begin():
                    await outbox.mark_attempt_failed(session, row.id, f"{type(exc).__name__}: {exc}", retry_at)
                return settled  # keep order: do not send later rows past a failing one
            async with station.db.session() as session, session.begin():
                await outbox.mark_sent(session, row.id, station.now(), message_id)
            settled += 1


async def run_sender(station: Station, transport: Transport, ready: asyncio.Event) -> None:
    """Forever: wait until connected, then drain whenever new rows are announced (or periodically)."""
    while True:
        await ready.wait()
        station.outbox_ready.clear()
        try:
            await drain_once(station, transport)
        except Exception:
            _reraise_if_cancelled()
            log.exception("outbox sender error; retrying")
        try:
            await asyncio.wait_for(station.outbox_ready.wait(), IDLE_CHECK_SECONDS)
        except TimeoutError:
            pass
