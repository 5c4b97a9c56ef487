"""bot/heap.py: after start-up the heap is frozen, and what a config reload replaces is still freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bot import heap
from bot.config.loader import load_config
from handlers.runtime import ConfigVersion
from tests.conftest import ROOT


@pytest.fixture
def settled() -> Iterator[None]:
    heap.settle()
    try:
        yield
    finally:
        gc.unfreeze()  # leave the test process's collector as it was


def test_settling_takes_what_lives_out_of_the_collectors_view(settled: None) -> None:
    assert gc.get_freeze_count() > 10_000  # the imported libraries, at least


def test_a_config_version_replaced_after_settling_is_still_freed(settled: None) -> None:
    """The promise ``bot/heap.py`` rests on: a replaced version leaves no reference cycle behind, so
    reference counting frees it although it was frozen with everything else."""
    old = ConfigVersion.build(load_config(ROOT / "config.yaml"))
    gc.freeze()  # as if it had been live when the heap settled
    gone = weakref.ref(old)
    router = weakref.ref(old.router)
    del old
    assert gone() is None and router() is None
