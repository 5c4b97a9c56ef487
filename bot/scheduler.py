"""The one timer loop: due escalation steps, reminders, lapsed acknowledgements, officers' return digests,
inquiry tickets' reminders and breaches, and the weekly report, every few seconds
(``escalation.tick_seconds``) or at once when something wakes it. Due times live in the database, so the
loop itself holds nothing that a restart could lose."""

from __future__ import annotations

import asyncio
import logging

from handlers.digest import send_digests
from handlers.escalation import run_due
from handlers.runtime import Station
from handlers.tickets import run_due_tickets
from handlers.weekly_report import send_weekly_report

log = logging.getLogger(__name__)


async def run_timers(station: Station, wake: asyncio.Event, rounds: asyncio.Event | None = None) -> None:
    """Every tick (or when ``wake`` is set): each job once. ``rounds`` is set after every round (tests wait for
    the first one: which officers were on duty at start-up is recorded then)."""
    while True:
        wake.clear()
        for job in (run_due, send_digests, run_due_tickets, send_weekly_report):
            try:
                await job(station)
            except Exception:
                log.exception("timer job %s failed; retrying at the next tick", job.__name__)
        if rounds is not None:
            rounds.set()
        try:
            await asyncio.wait_for(wake.wait(), station.current.config.escalation.tick_seconds)
        except TimeoutError:
            pass
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Python 3.11's wait_for returns normally when the wake and a cancellation land together,
            # swallowing the cancellation: the loop would run on and App.stop() would wait forever.
            raise asyncio.CancelledError
