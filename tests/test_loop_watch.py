"""The event-loop watch: a held loop is reported with its length, the collector's share and where it was."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from bot.loop_watch import DEFAULT_THRESHOLD, ENV_THRESHOLD_MS, LoopWatch, Stall, threshold_from_env


def hold_the_loop(seconds: float, *, collect: bool = False) -> None:
    if collect:
        gc.collect()
    time.sleep(seconds)


async def watch_one_stall(**hold: object) -> tuple[LoopWatch, Stall]:
    stalls: list[Stall] = []
    reported = asyncio.Event()

    def on_stall(stall: Stall) -> None:
        stalls.append(stall)
        reported.set()

    watch = LoopWatch(asyncio.get_running_loop(), threshold=0.08, interval=0.01, on_stall=on_stall)
    watch.start()
    try:
        await asyncio.sleep(0)
        hold_the_loop(0.3, **hold)  # type: ignore[arg-type]
        await asyncio.wait_for(reported.wait(), 10)
    finally:
        watch.stop()
    assert len(stalls) == 1, [s.describe() for s in stalls]
    return watch, stalls[0]


async def test_a_held_loop_is_reported_with_its_length_and_where_it_was_held() -> None:
    watch, stall = await watch_one_stall()
    assert 0.25 <= stall.seconds < 5
    assert watch.stalls == 1
    assert stall.samples, "the watchdog thread sampled nothing while the loop was held"
    stack, _ = stall.samples.most_common(1)[0]
    innermost = stack.splitlines()[-1]
    assert "test_loop_watch.py:" in innermost and innermost.endswith(" in hold_the_loop")
    text = stall.describe()
    assert text.startswith("event loop held for ") and "hold_the_loop" in text


async def test_the_collectors_share_of_a_stall_is_timed() -> None:
    _, stall = await watch_one_stall(collect=True)
    assert 0 < stall.gc_seconds < stall.seconds


async def test_stop_ends_the_watchdog_thread_and_unhooks_the_collector() -> None:
    watch = LoopWatch(asyncio.get_running_loop(), threshold=0.5)
    watch.start()
    watch.stop()
    assert watch._thread is not None and not watch._thread.is_alive()
    assert watch._gc not in gc.callbacks


@pytest.mark.parametrize(("value", "expected"), [
    (None, DEFAULT_THRESHOLD),
    ("", DEFAULT_THRESHOLD),
    ("40", 0.04),
    ("0", None),
    ("-5", None),
    ("forty", DEFAULT_THRESHOLD),
])
def test_the_threshold_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                                  expected: float | None) -> None:
    if value is None:
        monkeypatch.delenv(ENV_THRESHOLD_MS, raising=False)
    else:
        monkeypatch.setenv(ENV_THRESHOLD_MS, value)
    assert threshold_from_env() == expected
