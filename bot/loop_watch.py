"""Notice when something holds the event loop, and say where.

Every reply, ping and load of one process waits on one event loop, so anything that holds it (a slow query
run inline, a full garbage collection, a CPU-heavy step) delays all of them at once. The loop runs a
heartbeat every ``interval``; a heartbeat that comes ``threshold`` or more late reports a stall: how long
it lasted, how much of it was garbage collection (timed with ``gc.callbacks``), and the stacks a watchdog
thread sampled from the loop's thread while the heartbeat was overdue (the most frequent first).

A stall spent entirely in C code that keeps the GIL (a garbage collection, some C extensions) cannot be
sampled while it lasts, since the watchdog thread needs the GIL too; it is still reported, by the late
heartbeat, with no stack or with the stack of what ran after it.

On by default with a coarse setting (a report for stalls of 500 ms or more); ``GONGHAO_STALL_MS`` sets the
threshold (``0`` turns the watch off), e.g. 40 ms to find what sets a p99.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
ENV_THRESHOLD_MS = "GONGHAO_STALL_MS"
STACK_DEPTH = 12  # innermost frames kept per sample: enough to name the call site under asyncio's frames


@dataclass
class Stall:
    """One stretch during which the loop ran no callbacks of its own."""

    seconds: float
    gc_seconds: float  # of which the garbage collector ran this long
    samples: collections.Counter[str] = field(default_factory=collections.Counter)  # stack text → times seen

    def describe(self) -> str:
        lines = [f"event loop held for {1000 * self.seconds:.0f} ms"
                 f" (garbage collection {1000 * self.gc_seconds:.0f} ms)"]
        if not self.samples:
            lines.append("  no stack sampled: the stall ended before the watchdog looked, or held the GIL "
                         "throughout (C code, garbage collection)")
        for stack, times in self.samples.most_common(3):
            lines.append(f"  seen {times}x:")
            lines.extend(f"    {line}" for line in stack.splitlines())
        return "\n".join(lines)


def threshold_from_env() -> float | None:
    """The threshold in seconds from ``GONGHAO_STALL_MS``; None when the watch is turned off."""
    raw = os.environ.get(ENV_THRESHOLD_MS)
    if raw is None or raw.strip() == "":
        return DEFAULT_THRESHOLD
    try:
        ms = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number of milliseconds; using %.0f ms", ENV_THRESHOLD_MS, raw,
                    1000 * DEFAULT_THRESHOLD)
        return DEFAULT_THRESHOLD
    return ms / 1000 if ms > 0 else None


class _GcTimer:
    """Time spent in the garbage collector, as a running total (read by the watchdog thread)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started


class LoopWatch:
    """Watch one event loop. ``on_stall`` is called in the loop's thread, once per stall, when the loop comes
    back; the default reports the stall as a warning in the log."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, threshold: float = DEFAULT_THRESHOLD,
                 interval: float | None = None, on_stall: Callable[[Stall], None] | None = None) -> None:
        self.loop = loop
        self.threshold = threshold
        self.interval = interval if interval is not None else min(0.05, threshold / 4)
        self.on_stall = on_stall or (lambda stall: log.warning("%s", stall.describe()))
        self.stalls = 0  # since start, and how long they held the loop in all (for /metrics and /healthz)
        self.stalled_seconds = 0.0
        self._due = 0.0  # when the pending heartbeat should run (time.monotonic())
        self._gc_at_beat = 0.0
        self._samples: collections.Counter[str] = collections.Counter()
        self._loop_thread = 0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._gc = _GcTimer()

    def start(self) -> None:
        """Call from the loop's own thread."""
        self._loop_thread = threading.get_ident()
        gc.callbacks.append(self._gc)
        self._schedule(time.monotonic())
        self._thread = threading.Thread(target=self._sample_while_overdue, name="loop-watch", daemon=True)
        self._thread.start()
        global _running
        _running = self

    def stop(self) -> None:
        global _running
        if _running is self:
            _running = None
        self._stopped.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        if self._thread is not None:
            self._thread.join()

    def _schedule(self, now: float) -> None:
        self._gc_at_beat = self._gc.total
        self._due = now + self.interval
        self._timer = self.loop.call_at(self.loop.time() + self.interval, self._heartbeat)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        due = self._due
        samples, self._samples = self._samples, collections.Counter()
        gc_seconds = self._gc.total - self._gc_at_beat
        self._schedule(now)
        if now - due < self.threshold:
            return
        self.stalls += 1
        self.stalled_seconds += now - due
        stall = Stall(seconds=now - due, gc_seconds=gc_seconds, samples=samples)
        try:
            self.on_stall(stall)
        except Exception:
            log.exception("reporting a stall failed")

    def _sample_while_overdue(self) -> None:
        """Sleep until the pending heartbeat would be ``threshold`` late; then, while it is, sample every
        ``interval``. A thread that wakes takes the GIL from the loop for a moment each time; this one wakes
        about once per ``threshold`` while the loop is well, not every ``interval``."""
        while True:
            late_at = self._due + self.threshold
            now = time.monotonic()
            if now < late_at:
                if self._stopped.wait(late_at - now):
                    return
                continue
            frame = sys._current_frames().get(self._loop_thread)
            if frame is not None:
                self._samples[_stack_text(frame)] += 1
            del frame
            if self._stopped.wait(self.interval):
                return


def _stack_text(frame: FrameType | None) -> str:
    """The innermost frames, outermost first, as "file:line in function" lines. Read straight off the frames:
    ``traceback`` would look up each source line (``linecache`` stats every file it has read), holding the
    GIL, and so the very loop it is watching, for milliseconds."""
    lines = []
    while frame is not None and len(lines) < STACK_DEPTH:
        code = frame.f_code
        lines.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        frame = frame.f_back
    return "\n".join(reversed(lines))


_running: LoopWatch | None = None


def running() -> LoopWatch | None:
    """The process's watch, the one started last (None while none runs)."""
    return _running


def watch_running_loop() -> LoopWatch | None:
    """Start the watch on the running loop with the environment's threshold; None when turned off."""
    threshold = threshold_from_env()
    if threshold is None:
        return None
    watch = LoopWatch(asyncio.get_running_loop(), threshold=threshold)
    watch.start()
    return watch
