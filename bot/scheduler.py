"""The one timer loop: due escalation steps, reminders, lapsed acknowledgements and officers' return
digests, every few seconds
(``escalation.tick_seconds``) or at once when something wakes it. Due times live in the database, so the
loop itself holds nothing that a restart could lose."""

from __future__ import annotations

import asyncio
import logging

from handlers.digest import send_digests
from handlers.escalation import run_due
from handlers.runtime import Station

log = logging.getLogger(__name__)


async def run_timers(station: Station, wake: asyncio.Event) -> None:
    while True:
        wake.clear()
        for job in (run_due, send_digests):
            try:
                await job(station)
            except Exception:
                log.exception("timer job %s failed; retrying at the next tick", job.__name__)
        try:
            await asyncio.wait_for(wake.wait(), station.current.config.escalation.tick_seconds)
        except TimeoutError:
            pass
