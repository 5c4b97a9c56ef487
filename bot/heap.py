"""Keep Python's full garbage collections off the event loop's busy hours.

A gen-2 collection walks every object the collector tracks. After start-up that is mostly what lives as
long as the process: the imported libraries, the config version and its router, SQLAlchemy's mappers and
statement caches (~170,000 objects). One such collection held the loop for ~100 ms in the middle of the
district benchmark's load phase, and the slowest replies of the phase were the ones it caught. Once start-up
is over those objects are moved out of the collector's view (``gc.freeze``), so that later collections walk
only what has been allocated since.

Frozen objects are still freed by reference counting; only a reference cycle among them is never reclaimed.
A replaced config version leaves no such cycle (``tests/test_heap.py``). The first connection's
python-wechaty objects, dropped when the connection to the puppet service is rebuilt, may hold cycles (not
measured); if so they stay, once: later connections are not frozen and are collected as usual.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def settle() -> None:
    """Start-up is over: collect what it left behind, and freeze the rest."""
    began = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.debug("heap settled: %s objects frozen in %.0f ms", gc.get_freeze_count(),
              1000 * (time.perf_counter() - began))
