"""SQLite's fsyncs and WAL checkpoints, on a thread of their own instead of in the event loop.

SQLite fsyncs the WAL in the commit itself (``synchronous=FULL``), and the bot commits in the event loop's
thread (``models/sqlite_inline.py``). On a virtual disk an fsync now and then takes 100-400 ms, and the
whole bot waited that long: every load, every other group's reply. So the station's connection commits
with ``synchronous=NORMAL`` (no fsync) and without SQLite's automatic checkpoint (which would fsync inside
a commit), and this thread does both:

- it fsyncs the WAL whenever commits are waiting for it: at once when the bot is about to act on them
  (:meth:`sync_now`, awaited by the outbox sender before it sends anything), otherwise within ``interval``;
- every ``interval`` it checkpoints the WAL into the database file on a connection of its own.

With ``database.sqlite_sync: full`` (the default) the outbox sender and the admin web's form answers await
:meth:`sync_now` (through ``Database.sync_now`` and ``Database.durable``): nothing is sent (no reply, no ping)
and no form says "saved" before what caused it is on disk, as with a fsync per commit, while the rest of the
bot goes on. Several commits share one fsync. With ``normal`` nothing waits: a power cut may lose the last
``interval`` of commits. A crash of the process loses nothing either way (the WAL is in the operating system's
hands at commit).

A PASSIVE checkpoint takes no lock that writers wait for, and SQLite and ``os.fsync`` release the GIL while
they write, so the loop pays a hand-over per wait, not the disk's time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.5  # seconds between checkpoints, and the most a power cut can lose with sqlite_sync normal
SLOW_SECONDS = 2.0  # a sync or checkpoint this slow is worth a warning: the disk is struggling


class WalCheckpointer:
    """Syncs and checkpoints one SQLite file's WAL until :meth:`stop`."""

    def __init__(self, path: str, interval: float = DEFAULT_INTERVAL) -> None:
        self.path = path
        self.interval = interval
        # rounds completed: the WAL fsynced and its frames copied into the database file, up to any that a
        # reader's snapshot still needs (another process's long read); those wait for a later round
        self.checkpoints = 0
        self.failures = 0  # checkpoint rounds or syncs that did not complete
        self.syncs = 0
        self.last_seconds = 0.0  # how long the last checkpoint took
        self.busy_timeout_ms = 10_000  # waits for another process's lock before a round gives up
        self._failing = 0  # rounds failed in a row
        self._committed = 0  # commits on the station's connection (counted in the loop's thread)
        self._synced = 0  # of those, known to be on disk (set by this thread)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # loop thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self.parked = asyncio.Event()  # set while a sync asked for is not done (tests wait on it)
        self._done = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Sync, checkpoint a last time and close the thread's connection (``Database.close`` calls this after
        closing the station's, so that the last connection out checkpoints what is left and removes the WAL)."""
        if not self.running:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def committed(self) -> None:
        """Called in the loop's thread after every commit on the station's connection."""
        self._committed += 1

    def sync_now(self) -> asyncio.Future[None]:
        """Start the fsync of every commit so far at once; the future is done when they are on disk. The caller
        goes on meanwhile (its later commits are not covered): the outbox sender claims its rows while the
        thread syncs what caused them."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        target = self._committed
        if self._synced >= target:
            future.set_result(None)
            return future
        if not self.running:  # stopping or never started: sync here rather than act unsynced
            self._sync_wal()
            self._synced = max(self._synced, target)
            future.set_result(None)
            return future
        self._loop = loop
        self._waiters.append((target, future))
        self.parked.set()
        self._wake.set()
        return future

    def wait_until(self, condition: Callable[[WalCheckpointer], bool], timeout: float) -> bool:
        """Block until ``condition`` holds after a round (tests; from a thread, not the loop)."""
        with self._done:
            return self._done.wait_for(lambda: condition(self), timeout)

    def _release(self) -> None:
        """In the loop's thread: settle the waits that the last sync covered."""
        synced = self._synced
        waiting = []
        for target, future in self._waiters:
            if target > synced:
                waiting.append((target, future))
            elif not future.done():
                future.set_result(None)
        self._waiters = waiting
        if waiting:
            self._wake.set()
        else:
            self.parked.clear()

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        next_checkpoint = time.monotonic() + self.interval
        try:
            while True:
                self._wake.wait(max(0.0, next_checkpoint - time.monotonic()))
                self._wake.clear()
                stopping = self._stop.is_set()
                try:
                    if self._synced < self._committed and not self._sync():
                        self._stop.wait(self.interval)  # a failing disk: do not spin
                    if self._waiters:  # also those that came after this sync had begun, and need no other
                        self._wake_waiters()
                    if stopping or time.monotonic() >= next_checkpoint:
                        next_checkpoint = time.monotonic() + self.interval
                        if connection is None:
                            connection = sqlite3.connect(self.path, check_same_thread=False)
                        if not self._checkpoint(connection):
                            connection.close()  # the next round opens the file anew (it may have been replaced)
                            connection = None
                except Exception:  # whoever waits for a sync depends on this thread staying up
                    log.exception("WAL sync or checkpoint of %s failed; retrying", self.path)
                    with self._done:
                        self.failures += 1
                        self._done.notify_all()
                    self._stop.wait(self.interval)
                if stopping:
                    return
        finally:
            if connection is not None:
                connection.close()

    def _sync(self) -> bool:
        """fsync the WAL for every commit counted so far."""
        target = self._committed  # read before the fsync: commits counted later may not be covered
        started = time.monotonic()
        try:
            self._sync_wal()
        except OSError as exc:
            with self._done:
                self.failures += 1
                self._done.notify_all()
            log.warning("fsync of %s-wal failed: %s; commits wait for the disk", self.path, exc)
            return False
        seconds = time.monotonic() - started
        if seconds > SLOW_SECONDS:
            log.warning("fsync of %s-wal took %.1f s (the disk is slow)", self.path, seconds)
        self._synced = target
        self.syncs += 1
        return True

    def _wake_waiters(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._release)
        except RuntimeError:  # the loop closed meanwhile (shutting down): nobody is left to wake
            pass

    def _sync_wal(self) -> None:
        """fsync the WAL itself (SQLite's checkpoint syncs it only when it has frames to copy, and a reader's
        snapshot can leave it none)."""
        try:
            wal = os.open(self.path + "-wal", os.O_RDONLY)
        except FileNotFoundError:
            return  # nothing committed in WAL mode yet
        try:
            os.fsync(wal)
        finally:
            os.close(wal)

    def _checkpoint(self, connection: sqlite3.Connection) -> bool:
        started = time.monotonic()
        error: sqlite3.Error | None = None
        try:
            connection.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            busy, _frames, _copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # a locked, damaged or replaced file: the next round tries again
            busy, error = True, exc
        self.last_seconds = time.monotonic() - started
        if self.last_seconds > SLOW_SECONDS:
            log.warning("WAL checkpoint of %s took %.1f s (the disk is slow; commits are not held up)",
                        self.path, self.last_seconds)
        with self._done:
            if busy:
                self.failures += 1
                self._failing += 1
            else:
                self.checkpoints += 1
            self._done.notify_all()
        if busy and self._failing == 1:  # once per spell of failures, not every half second
            log.warning("WAL checkpoint of %s did not complete (%s); retrying every %.1f s", self.path,
                        error or "busy", self.interval)
        elif not busy and self._failing:
            log.info("WAL checkpoint of %s completes again after %s failed rounds", self.path, self._failing)
            self._failing = 0
        return error is None
