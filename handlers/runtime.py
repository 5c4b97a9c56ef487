"""The live, swappable view of a config version, and the services every handler shares."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bot.config.schema import Config, GroupConfig, OfficerConfig
from handlers.knowledge import knowledge_for
from handlers.metrics import Metrics
from handlers.routing import Router
from models.db import Database

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class FileClock:
    """A scripted clock for drills and end-to-end tests of a real process: the file holds an ISO 8601
    timestamp with its offset; time then runs on from it at the normal rate until the file changes again.
    Selected by the GONGHAO_CLOCK_FILE environment variable; never set it in production."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: int | None = None
        self._base = system_clock()
        self._read_at = time.monotonic()

    def __call__(self) -> datetime:
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except OSError:
            stamp = None
        if stamp is not None and stamp != self._stamp:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read().strip()
            if text:
                parsed = datetime.fromisoformat(text)
                self._base = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
                self._read_at = time.monotonic()
                self._stamp = stamp
        return self._base + timedelta(seconds=time.monotonic() - self._read_at)


def clock_from_env() -> Clock:
    path = os.environ.get("GONGHAO_CLOCK_FILE")
    return FileClock(path) if path else system_clock


@dataclass(frozen=True)
class ConfigVersion:
    """Everything derived from one config, built once at load so that no message pays for it."""

    config: Config
    router: Router
    version: str
    groups_by_room: dict[str, GroupConfig]
    groups_by_topic: dict[str, GroupConfig]
    officers_by_wechat: dict[str, OfficerConfig]

    @classmethod
    def build(cls, config: Config, source_text: str = "") -> ConfigVersion:
        digest = hashlib.sha256((source_text or config.model_dump_json()).encode()).hexdigest()[:12]
        if config.inquiries.enabled:
            # Read it now rather than on the first question: parsing it held the event loop for ~100 ms.
            knowledge_for(config.inquiries.knowledge_base)
        return cls(
            config=config,
            router=Router(config),
            version=digest,
            groups_by_room={g.room_id: g for g in config.groups if g.room_id},
            groups_by_topic={g.topic: g for g in config.groups if g.topic},
            officers_by_wechat={o.wechat_id: o for o in config.officers},
        )

    def group_for(self, room_id: str | None, topic: str | None) -> GroupConfig | None:
        if room_id and room_id in self.groups_by_room:
            return self.groups_by_room[room_id]
        if topic and topic in self.groups_by_topic:
            return self.groups_by_topic[topic]
        return None


class UrgentFirst:
    """Urgent sends (replies to reports, pings) go before the next intake batch.

    Under load the intake always has a batch ready, and on SQLite the process has one connection: the
    sender's claim and record would each queue behind a batch, and a reply waited seconds. The sender holds
    :meth:`sending` around an urgent round's claim and again around its record, not across its sends: rounds
    overlap (``bot/sender.py``), and held across their gRPC round trips the lane would keep the intake waiting
    most of the time under load. The intake calls :meth:`wait_turn` before each batch. Broadcast copies do not
    take this lane, so a long broadcast never starves the intake."""

    def __init__(self) -> None:
        self._sending = 0
        self._clear = asyncio.Event()
        self._clear.set()

    @contextlib.asynccontextmanager
    async def sending(self) -> AsyncIterator[None]:
        self._sending += 1
        self._clear.clear()
        try:
            yield
        finally:
            self._sending -= 1
            if not self._sending:
                self._clear.set()

    async def wait_turn(self) -> None:
        await self._clear.wait()


@dataclass
class Station:
    """One station account's shared services. ``current`` is replaced whole on reload."""

    current: ConfigVersion
    db: Database
    clock: Clock = system_clock
    outbox_ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Set each time the sender has recorded a round (sent, failed or given back), for whoever watches the outbox.
    outbox_recorded: asyncio.Event = field(default_factory=asyncio.Event)
    urgent_first: UrgentFirst = field(default_factory=UrgentFirst)
    metrics: Metrics = field(default_factory=Metrics)  # one registry per station: tests run several
    # The other stations of the district (when run from a district file), for district-wide warnings.
    peers: dict[str, ConfigVersion] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.current.config.station.id

    def now(self) -> datetime:
        return self.clock()
