"""SQLite's WAL checkpoints on a thread of their own, for ``database.sqlite_sync: normal``.

With ``synchronous=FULL`` (the default) every commit fsyncs the WAL, in the event loop's thread
(``models/sqlite_inline.py``). On a virtual disk an fsync now and then takes 100-400 ms, and the whole bot
waits that long: every load, every other group's reply. With ``synchronous=NORMAL`` a commit does not fsync;
the WAL is fsynced when it is checkpointed into the database file. SQLite runs that checkpoint inside the
commit that passes ``wal_autocheckpoint`` pages, which would bring the stall back, so the station's own
connection turns automatic checkpoints off and this thread checkpoints on a connection of its own, every
``interval`` seconds: the loop never waits on the disk, and a power cut loses at most the commits of the
last interval (a process crash loses nothing: the WAL is in the operating system's hands at commit).

A PASSIVE checkpoint takes no lock that writers wait for; SQLite releases the GIL while it copies and
syncs, so the thread costs the loop nothing but a wake-up per interval.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.5  # seconds: the most a power cut can lose, plus one checkpoint's own time
SLOW_CHECKPOINT_SECONDS = 2.0  # worth a warning: the disk is struggling, and the loss window grows


class WalCheckpointer:
    """Checkpoints one SQLite file's WAL every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, path: str, interval: float = DEFAULT_INTERVAL) -> None:
        self.path = path
        self.interval = interval
        # rounds completed: the WAL fsynced and its frames copied into the database file, up to any that a
        # reader's snapshot still needs (another process's long read); those wait for a later round
        self.checkpoints = 0
        self.failures = 0
        self._failing = 0  # rounds failed in a row
        self.last_seconds = 0.0  # how long the last checkpoint took
        self.busy_timeout_ms = 10_000  # waits for another process's lock before a round gives up
        self._done = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after a last checkpoint and close the thread's connection (``Database.close`` calls this after
        closing the station's, so that the last connection out checkpoints what is left and removes the WAL)."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join()

    def wait_until(self, condition: Callable[[WalCheckpointer], bool], timeout: float) -> bool:
        """Block until ``condition`` holds after a round (tests; from a thread, not the loop)."""
        with self._done:
            return self._done.wait_for(lambda: condition(self), timeout)

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        try:
            while True:
                stopping = self._stop.wait(self.interval)
                if connection is None:
                    connection = sqlite3.connect(self.path, check_same_thread=False)
                if not self._checkpoint(connection):
                    connection.close()  # the next round opens the file anew (it may have been replaced)
                    connection = None
                if stopping:
                    return
        finally:
            if connection is not None:
                connection.close()

    def _sync_wal(self) -> None:
        """fsync the WAL itself. A checkpoint syncs it only when it has frames to copy, and a reader's snapshot
        (another process's long read) can leave it none; the commits since must reach the disk all the same."""
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
            self._sync_wal()
            connection.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            busy, _frames, _copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except (sqlite3.Error, OSError) as exc:  # a locked, damaged or replaced file: the next round tries again
            busy, error = True, exc
        self.last_seconds = time.monotonic() - started
        if self.last_seconds > SLOW_CHECKPOINT_SECONDS:
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
