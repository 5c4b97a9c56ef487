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
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.broadcasts import finish_if_done
from handlers.runtime import Station
from models import outbox
from models.tables import Broadcast, BroadcastStatus, OutboxMessage

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
IDLE_CHECK_SECONDS = 5.0  # also picks up rows left by a crash or written by another process
ROUND_SIZE = 50  # rows read (and at most claimed) per round
CONCURRENT_SENDS = 8  # sends in flight at once, across the rounds in flight, each to another conversation
# Rounds in flight at once. More would only queue on the shared send cap; fewer let one hung send's round
# and a broadcast's hold up the replies behind them.
MAX_ROUNDS_IN_FLIGHT = 4
SETTLE_EVERY_SECONDS = 5.0  # how often to look for rows a dead sender left 'sending'
# How long one attempt (membership check and send) may take. Well under STALE_CLAIM: a row still 'sending'
# after STALE_CLAIM is taken for a dead sender's and queued again, so a slow but alive sender must have given
# up on it long before, or it would go out twice.
SEND_TIMEOUT = outbox.STALE_CLAIM / 3
# A send we gave up on may still be accepted by the service; its echo then comes back. The retry waits at
# least this long, and looks for that echo before sending again (``outbox.find_echo``).
UNANSWERED_RETRY_AFTER = timedelta(seconds=15)


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


CAPS_RECOUNT = timedelta(seconds=1)


class Pacer:
    """When the next group / private message may go. The intervals are in memory; the per-minute and per-day
    caps are counted in the database (other processes of the account send too) at most once every
    ``CAPS_RECOUNT`` and kept up to date locally in between: counting on every round cost two queries per
    round, a tenth of the sender's time under load, for caps that are limits against spam, not exact quotas
    (another process's sends are seen up to a second late)."""

    def __init__(self, station: Station, rng: random.Random | None = None) -> None:
        self.station = station
        self.rng = rng or random.Random()
        self.next_group: datetime | None = None
        self.next_private: datetime | None = None
        self.group_last_minute = 0
        self.group_last_day = 0
        self.caps_counted_at: datetime | None = None
        self.group_in_flight = 0  # group rows taken by rounds in flight, not recorded yet

    async def count_caps(self, session: AsyncSession, account: str, now: datetime) -> None:
        """Group messages sent in the last minute and day, by any process of this account (counted again only
        when the last count is ``CAPS_RECOUNT`` old)."""
        counted_at = self.caps_counted_at
        if counted_at is not None and counted_at <= now < counted_at + CAPS_RECOUNT:
            return
        self.caps_counted_at = now
        # group rows this process has taken for rounds still in flight are not recorded as sent yet
        self.group_last_minute = self.group_in_flight + await outbox.sent_since(
            session, account, True, now - timedelta(minutes=1))
        self.group_last_day = self.group_in_flight + await outbox.sent_since(
            session, account, True, now - timedelta(days=1))

    def wait(self, row: OutboxMessage, now: datetime) -> float:
        """Seconds until ``row`` may go (0: now). Urgent rows are exempt from the daily cap only."""
        if not row.is_room:
            return max(0.0, (self.next_private - now).total_seconds()) if self.next_private else 0.0
        settings = self.station.current.config.outbox
        wait = max(0.0, (self.next_group - now).total_seconds()) if self.next_group else 0.0
        if self.group_last_minute >= settings.group_per_minute:
            wait = max(wait, 5.0)
        if row.priority > outbox.PRIORITY_URGENT and self.group_last_day >= settings.group_per_day:
            wait = max(wait, 60.0)
        return wait

    def take(self, row: OutboxMessage, now: datetime) -> None:
        """``row`` goes in a round starting now: its slot is taken until :meth:`settle` (a failed send wastes
        it, so the pacing errs towards fewer messages, never more)."""
        settings = self.station.current.config.outbox
        if row.is_room:
            jitter = self.rng.uniform(0, settings.group_jitter.total_seconds())
            self.next_group = now + settings.group_interval + timedelta(seconds=jitter)
            self.group_last_minute += 1
            self.group_last_day += 1
            self.group_in_flight += 1
        else:
            self.next_private = now + settings.private_interval

    def settle(self, rows: list[OutboxMessage]) -> None:
        """A round has recorded ``rows`` (or given up on them): the database's counts include what went."""
        self.group_in_flight -= sum(1 for row in rows if row.is_room)


async def drain_once(station: Station, transport: Transport, pacer: Pacer) -> float | None:
    """Send everything that may go now; returns seconds until the next paced row may go (None: nothing waits).

    A round: one read (the next rows in send order, and the caps when a group row is among them), one claim
    of every row whose turn it is, their sends, and one transaction recording them all. Per-row transactions
    queued behind the intake's batches and capped the sender at a few dozen messages a second under load.
    Urgent rows go before the intake's next batch (``Station.urgent_first``).

    Rounds overlap: while one round's sends are on their way, the next takes what was queued since. A reply
    committed just after a round began used to wait for that round's slowest send and its record: a hung send
    held every other conversation for up to ``SEND_TIMEOUT``, and at the district benchmark's ceiling rate a
    stored report's reply waited ~220 ms at the median to be claimed (~35 ms now). A conversation with a send
    in flight is left out of the next reads until its round ends, so each conversation keeps its order;
    sends to different conversations overlap (``_deliver_all``), at most ``CONCURRENT_SENDS`` at once across
    rounds, and a failed send ends its conversation's turn: the rows not attempted are given back. A round
    that fails (its record, say) fails the drain once the other rounds have ended; only a stop cuts sends
    short."""
    rounds: dict[asyncio.Task[None], frozenset[str]] = {}  # rounds in flight, and the conversations of each
    sending = asyncio.Semaphore(CONCURRENT_SENDS)  # shared: overlapping rounds do not multiply the sends at once
    failure: BaseException | None = None
    must_read = True
    complete = False  # the last read took every pending row: none held back by pacing or a busy conversation
    try:
        while True:
            soonest: float | None = None
            just_read = False
            if must_read and failure is None and len(rounds) < MAX_ROUNDS_IN_FLIGHT:
                station.outbox_ready.clear()  # rows committed from here on announce themselves again
                busy = frozenset().union(*rounds.values())
                due, soonest, full = await _next_round(station, pacer, busy)
                complete = not busy and not full and soonest is None
                just_read, must_read = True, False
                if due:
                    task = asyncio.create_task(_send_round(station, transport, due, sending),
                                               name="outbox-round")
                    task.add_done_callback(lambda _, taken=due: pacer.settle(taken))
                    rounds[task] = frozenset(row.conversation_id for row in due)
                    if full:  # more rows may wait behind this read
                        must_read = True
                        continue
            if not rounds:
                if failure is not None:
                    raise failure
                if just_read or (complete and not station.outbox_ready.is_set()):
                    return soonest
                must_read = True
                continue
            announced = asyncio.ensure_future(station.outbox_ready.wait())
            try:
                await asyncio.wait([*rounds, announced], timeout=soonest, return_when=asyncio.FIRST_COMPLETED)
            finally:
                announced.cancel()
            _reraise_if_cancelled()
            for task in [task for task in rounds if task.done()]:
                del rounds[task]
                if task.exception() is not None and failure is None:
                    failure = task.exception()
            # a paced row's turn, a new row, or a round's end with rows held back for its conversations
            must_read = must_read or station.outbox_ready.is_set() or not complete
    except asyncio.CancelledError:  # the bot is stopping: a send cut short is settled by its echo after restart
        for task in rounds:
            task.cancel()
        raise
    finally:
        if rounds:  # a read failed (or we were cancelled): the rounds in flight end first
            try:
                await asyncio.wait(rounds)
            except asyncio.CancelledError:
                for task in rounds:
                    task.cancel()
                raise
            finally:
                for task in rounds:
                    if task.done() and not task.cancelled():
                        task.exception()  # retrieved: the first failure is the one raised


async def _next_round(station: Station, pacer: Pacer, busy: frozenset[str]) -> tuple[list[OutboxMessage],
                                                                                        float | None, bool]:
    """The rows whose turn it is, outside the ``busy`` conversations, with their pacing slots taken; the
    seconds until the next paced row may go (None: none held back); whether the read was full."""
    now = station.now()
    async with station.db.session() as session:
        rows = await outbox.next_pending(session, station.id, now, limit=ROUND_SIZE, busy=busy)
        if any(row.is_room for row in rows):
            await pacer.count_caps(session, station.id, now)
    due: list[OutboxMessage] = []
    soonest: float | None = None
    for row in rows:  # in send order: urgent first, then oldest
        wait = pacer.wait(row, now)
        if wait > 0:
            soonest = wait if soonest is None else min(soonest, wait)
            continue
        due.append(row)
        pacer.take(row, now)  # at once: a round in flight holds its slots
    return due, soonest, len(rows) == ROUND_SIZE


async def _send_round(station: Station, transport: Transport, due: list[OutboxMessage],
                      sending: asyncio.Semaphore) -> None:
    """Claim ``due``, send what this claim got, record the outcomes."""
    now = station.now()
    # What caused these rows (committed before they were read) is on disk before anyone hears of it. The
    # fsync runs while the rows are claimed: the claim itself need not be on disk first, since a row found
    # claimed after a power cut is sent again unless its echo is stored, as an unclaimed one would be.
    caused_on_disk = station.db.sync_now()
    urgent = any(row.priority <= outbox.PRIORITY_URGENT for row in due)
    async with station.urgent_first.sending() if urgent else nullcontext():
        async with station.db.session() as session, session.begin():
            claimed = await outbox.claim_many(session, [row.id for row in due], now)
    # rows another process claimed meanwhile are its to send
    mine = [row for row in due if row.id in claimed]
    await caused_on_disk
    echoed = await _already_echoed(station, mine)
    results = echoed + await _deliver_all(transport, [row for row in mine if row.id not in
                                                      {r.row.id for r in echoed}], sending)
    unsent = [row.id for row in mine if row.id not in {r.row.id for r in results}]
    plain = {r.row.id: r.message_id for r in results  # sent, and no broadcast to finish
             if r.error is None and not r.not_member and r.row.broadcast_id is None}
    async with station.urgent_first.sending() if urgent else nullcontext():
        async with station.db.session() as session, session.begin():
            settled = await outbox.mark_many_sent(session, plain, station.now(), claimed_at=now)
            recorded = [result.row.id in settled if result.row.id in plain
                        else await _record(session, station, result, now) for result in results]
            await outbox.release(session, unsent, now)
    station.outbox_recorded.set()
    for result, was_recorded in zip(results, recorded, strict=True):
        if result.row.id in plain and not was_recorded:
            log.warning("outbox #%s was taken over by another sender before its send here was recorded",
                        result.row.id)
        _count(station, result, was_recorded)
    _reraise_if_cancelled()  # a stop that landed during a send, which grpclib turned into an error


async def _already_echoed(station: Station, rows: list[OutboxMessage]) -> list[_Result]:
    """Rows claimed before (an attempt without a clear answer, or a dead sender's) whose echo has come back
    since: they went out, so they are recorded as sent instead of being sent again."""
    again = [row for row in rows if row.claimed_at is not None]  # read before this round's claim
    if not again:
        return []
    results = []
    async with station.db.session() as session:
        for row in again:
            echo = await outbox.find_echo(session, row)
            if echo is not None:
                log.info("outbox #%s went out after all (its echo %s came back); not sending it again", row.id,
                         echo.message_id)
                results.append(_Result(row, message_id=echo.message_id))
    return results


class _NotMember(Exception):
    """The bot has left the group a broadcast copy is for: skip it, do not retry."""


async def _attempt(transport: Transport, row: OutboxMessage) -> str | None:
    if row.broadcast_id is not None and row.is_room and not await transport.is_member(row.conversation_id):
        raise _NotMember
    return await transport.send(row.conversation_id, row.text, is_room=row.is_room,
                                mentions=list(row.mentions or []))


@dataclass
class _Result:
    row: OutboxMessage
    message_id: str | None = None
    error: str | None = None  # the attempt failed (retried later, or given up)
    not_member: bool = False  # a broadcast copy for a group the bot has left: skipped
    unanswered: bool = False  # the attempt timed out: the service may still have sent it
    retry_at: datetime | None = None


async def _deliver(transport: Transport, row: OutboxMessage) -> _Result:
    """One attempt at one claimed row, bounded by SEND_TIMEOUT."""
    try:
        async with asyncio.timeout(SEND_TIMEOUT.total_seconds()):  # no task of its own, unlike wait_for
            return _Result(row, message_id=await _attempt(transport, row))
    except _NotMember:
        return _Result(row, not_member=True)
    except Exception as exc:
        _reraise_if_cancelled()
        # a timed-out attempt is a failed one, retried after the usual backoff but no sooner than
        # UNANSWERED_RETRY_AFTER (the timeout's error has no text)
        unanswered = isinstance(exc, TimeoutError)
        error = f"no answer within {SEND_TIMEOUT}" if unanswered else f"{type(exc).__name__}: {exc}"
        log.warning("outbox #%s to %s failed (attempt %s): %s", row.id, row.conversation_id, row.attempts + 1,
                    error)
        return _Result(row, error=error, unanswered=unanswered)


async def _deliver_in_order(transport: Transport, rows: list[OutboxMessage],
                            limit: asyncio.Semaphore) -> list[_Result]:
    """One conversation's rows, one after another; a failure stops the rest (they must not overtake it)."""
    results: list[_Result] = []
    for row in rows:
        async with limit:
            results.append(result := await _deliver(transport, row))
        if result.error is not None:
            break
    return results


async def _deliver_all(transport: Transport, rows: list[OutboxMessage],
                       limit: asyncio.Semaphore) -> list[_Result]:
    """Every claimed row of a round, conversations side by side: a reply to one group does not wait for the
    gRPC round trips of pings and replies to others (under load they queued one behind another)."""
    chains: dict[str, list[OutboxMessage]] = {}
    for row in rows:  # send order kept within each conversation
        chains.setdefault(row.conversation_id, []).append(row)
    if len(chains) <= 1:
        return await _deliver_in_order(transport, rows, limit)
    done = await asyncio.gather(*(_deliver_in_order(transport, chain, limit) for chain in chains.values()))
    return [result for chain in done for result in chain]


async def _record(session: AsyncSession, station: Station, result: _Result, claimed_at: datetime) -> bool:
    """Record one attempt. Conditional on our claim still holding: if another process has taken the row over
    meanwhile, its record stands and ours is dropped (returns False)."""
    row = result.row
    if result.not_member:
        assert row.broadcast_id is not None  # only broadcast copies are checked
        recorded = await outbox.mark_attempt_failed(session, row.id, "the bot is no longer in this group", None,
                                                    skipped=True, claimed_at=claimed_at)
        if recorded:
            await finish_if_done(session, station, row.broadcast_id)
        return recorded
    if result.error is not None:
        attempt = row.attempts + 1
        wait = backoff(attempt)
        if result.unanswered:
            wait = max(wait, UNANSWERED_RETRY_AFTER)  # time for a late acceptance's echo to come back
        result.retry_at = station.now() + wait if attempt < MAX_ATTEMPTS else None
        recorded = await outbox.mark_attempt_failed(session, row.id, result.error, result.retry_at,
                                                    claimed_at=claimed_at)
        if recorded and result.retry_at is None and row.broadcast_id is not None:
            await finish_if_done(session, station, row.broadcast_id)
        if not recorded:
            log.warning("outbox #%s was taken over by another sender; its failure here is not recorded", row.id)
        return recorded
    recorded = await outbox.mark_sent(session, row.id, station.now(), result.message_id, claimed_at=claimed_at,
                                      broadcast=row.broadcast_id is not None)
    if recorded and row.broadcast_id is not None:
        await finish_if_done(session, station, row.broadcast_id)
    if not recorded:
        log.warning("outbox #%s was taken over by another sender before its send here was recorded", row.id)
    return recorded


def _count(station: Station, result: _Result, recorded: bool) -> None:
    if result.not_member:
        station.metrics.send_failed(result.row.kind, final=True)
    elif result.error is not None:
        station.metrics.send_failed(result.row.kind, final=recorded and result.retry_at is None)
    else:
        station.metrics.sent(result.row.kind)


async def settle_stale(station: Station) -> None:
    """Settle the rows a dead sender left 'sending', and finish every broadcast whose deliveries have all
    settled: those whose last delivery this was, and any left 'sending' by a sender that died between its
    last delivery and finishing (or by the race fixed in ``finish_if_done``), which nothing else would close."""
    async with station.db.session() as session, session.begin():
        settled, requeued = await outbox.reconcile_stale(session, station.id, station.now())
        unfinished = (await session.scalars(
            select(Broadcast.id).where(Broadcast.status == BroadcastStatus.sending).order_by(Broadcast.id))).all()
        for broadcast_id in unfinished:  # in id order, as every sender locks broadcasts
            await finish_if_done(session, station, broadcast_id)
    if settled or requeued:
        log.info("outbox: %s interrupted sends confirmed by their echo, %s queued again", settled, requeued)


async def run_sender(station: Station, transport: Transport, ready: asyncio.Event) -> None:
    """Forever: wait until connected, settle rows a dead sender left behind, then drain whenever new rows
    are announced, a paced row's turn comes, or periodically."""
    pacer = Pacer(station)
    loop = asyncio.get_running_loop()
    settled_at: float | None = None
    while True:
        await ready.wait()
        station.outbox_ready.clear()
        wait: float | None = None
        try:
            if settled_at is None or loop.time() - settled_at >= SETTLE_EVERY_SECONDS:
                await settle_stale(station)
                settled_at = loop.time()
            wait = await drain_once(station, transport, pacer)
        except Exception:
            _reraise_if_cancelled()
            log.exception("outbox sender error; retrying")
        timeout = IDLE_CHECK_SECONDS if wait is None else min(max(wait, 0.01), IDLE_CHECK_SECONDS)
        # asyncio.timeout, not wait_for: in Python 3.11 wait_for runs the wait in a task of its own, two more
        # turns of a busy loop between a reply's commit and its read
        try:
            async with asyncio.timeout(timeout):
                await station.outbox_ready.wait()
        except TimeoutError:
            pass
        _reraise_if_cancelled()
