"""Prometheus metrics of one station process.

Each :class:`Metrics` has its own ``CollectorRegistry``, so that several apps in one process (the tests
start many) never share or clash over counters. Counters are bumped where things happen (after the
transaction that decided them commits); the two gauges that describe the present (outbox depth, puppet
connection) are computed when ``/metrics`` is scraped, by :meth:`Metrics.refresh`.

Label values are always from small fixed sets (outcome kinds, categories from the config, message kinds),
never free text, ids or names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from sqlalchemy import func, select

from models.outbox import PRIORITY_URGENT
from models.tables import OutboxMessage, OutboxStatus

if TYPE_CHECKING:
    from handlers.runtime import Station


@dataclass(frozen=True)
class ConnectionFigures:
    """The puppet connection and the intake as they are at scrape time (filled in by the web layer)."""

    connected: bool = False
    reconnects: int = 0
    liveness_failures: int = 0  # reconnects forced by the liveness probe (a hung service)
    seconds_since_event: float | None = None  # None before the first message event
    pending_events: int = 0  # message events received, payload not fetched yet
    unloadable: int = 0  # message events whose payload could not be fetched
    intake_backlog: int = 0  # loaded messages waiting for the pipeline
    # the payload helper process (``intake.payload_helper``): running now, and loads since start by where made
    helper_running: bool = False
    helper_loads: int = 0
    helper_fallbacks: int = 0
    helper_engaged: bool = False  # the helper takes the loads now (always when on; "auto": while they queue)
    # the process's event loop (``bot/loop_watch.py``): times it was held past the threshold, and for how long
    loop_stalls: int = 0
    loop_stalled_seconds: float = 0.0

__all__ = ["CONTENT_TYPE", "Metrics", "outcome_kind"]

# No "<name>_created" series beside every counter: they double the output and nobody here reads them.
disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_LATEST  # the text exposition format, "text/plain; version=…; charset=utf-8"

_RELOAD_RESULTS = ("ok", "failed", "unchanged")
_OUTCOME_WORD = re.compile(r"[a-z][a-z_]{0,39}")


def outcome_kind(outcome: str) -> str:
    """A pipeline outcome as a label value: ``"incident:fire,joined:scam"`` → ``"incident"``, all-joined →
    ``"incident_joined"``; the code's own words (``quiet``, ``duplicate``, ``ack_acknowledged``,
    ``resolve_resolved``…) as they are; anything else → ``"other"``, so that no id or text ever becomes a
    label."""
    if outcome.startswith("incident:"):
        parts = outcome.removeprefix("incident:").split(",")
        return "incident_joined" if all(p.startswith("joined:") for p in parts) else "incident"
    return outcome if _OUTCOME_WORD.fullmatch(outcome) else "other"


class Metrics:
    """The counters and gauges of one App, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_in = Counter(
            "gonghao_messages_in", "Messages received from the puppet service (before dedup)",
            ["conversation"], registry=r)
        self.messages_handled = Counter(
            "gonghao_messages_handled", "Messages handled by the pipeline, by outcome", ["outcome"],
            registry=r)
        self.incidents_opened = Counter(
            "gonghao_incidents_opened", "Incidents opened (not reports joining an open one), by category",
            ["category"], registry=r)
        self.pings_queued = Counter(
            "gonghao_pings_queued", "Private pings to officers written to the outbox", registry=r)
        self.acknowledgements = Counter(
            "gonghao_acknowledgements", "Incidents acknowledged by an officer", registry=r)
        self.outbox_sent = Counter(
            "gonghao_outbox_sent", "Outbox messages delivered to the puppet service, by kind", ["kind"],
            registry=r)
        self.outbox_failed = Counter(
            "gonghao_outbox_failed",
            "Failed delivery attempts, by kind; final=true when the row was given up (no more retries)",
            ["kind", "final"], registry=r)
        self.outbox_pending = Gauge(
            "gonghao_outbox_pending", "Outbox rows waiting to be sent (computed at scrape)", registry=r)
        self.outbox_oldest_urgent = Gauge(
            "gonghao_outbox_oldest_urgent_seconds",
            "Age of the oldest reply to a report or ping not sent yet, 0 when none (computed at scrape)",
            registry=r)
        self.config_reloads = Counter(
            "gonghao_config_reloads", "Config reloads by result: ok (new version live), failed (rejected, "
            "the running version stays), unchanged", ["result"], registry=r)
        self.puppet_connected = Gauge(
            "gonghao_puppet_connected", "1 while logged in to the puppet service (computed at scrape)",
            registry=r)
        self.escalations = Counter(
            "gonghao_escalations", "Escalation steps taken (each notifies one or more officers)", registry=r)
        self.reconnects = Gauge(
            "gonghao_puppet_reconnects", "Reconnections to the puppet service since start (computed at scrape)",
            registry=r)
        self.liveness_failures = Gauge(
            "gonghao_puppet_liveness_failures",
            "Reconnections forced by the liveness probe (the service stopped answering) since start", registry=r)
        self.seconds_since_event = Gauge(
            "gonghao_puppet_seconds_since_last_message",
            "Seconds since the last message event from the puppet service (-1 before the first)", registry=r)
        self.pending_events = Gauge(
            "gonghao_intake_pending_events",
            "Message events received whose payload is not fetched yet (a backlog after an outage or a flood)",
            registry=r)
        self.unloadable = Gauge(
            "gonghao_intake_unloadable_messages",
            "Message events whose payload the puppet service could not give since start", registry=r)
        self.intake_backlog = Gauge(
            "gonghao_intake_backlog", "Loaded messages waiting for the pipeline", registry=r)
        self.helper_running = Gauge(
            "gonghao_payload_helper_running", "1 while the payload helper process runs (intake.payload_helper)",
            registry=r)
        self.helper_loads = Gauge(
            "gonghao_payload_helper_loads", "Message payloads the helper process fetched since start", registry=r)
        self.helper_fallbacks = Gauge(
            "gonghao_payload_helper_fallbacks",
            "Message payloads fetched in the bot's own process while the helper was on but could not answer "
            "(starting, restarting, or its call failed) since start", registry=r)
        self.helper_engaged = Gauge(
            "gonghao_payload_helper_engaged",
            "1 while message payloads go to the helper process: always with intake.payload_helper on, and with "
            "auto while loads queue up in the bot", registry=r)
        self.loop_stalls = Gauge(
            "gonghao_event_loop_stalls",
            "Times since start that something held the process's event loop for the stall threshold "
            "(GONGHAO_STALL_MS, 500 ms by default) or more; each is logged with where it was held", registry=r)
        self.loop_stalled_seconds = Gauge(
            "gonghao_event_loop_stalled_seconds", "How long those stalls held the event loop, in all",
            registry=r)
        self.wal_syncs = Gauge(
            "gonghao_sqlite_wal_syncs",
            "fsyncs of the SQLite WAL by its own thread since start (several commits share one; 0 on PostgreSQL)",
            registry=r)
        self.wal_checkpoints = Gauge(
            "gonghao_sqlite_wal_checkpoints",
            "WAL checkpoints into the SQLite database file completed by that thread since start", registry=r)
        self.wal_checkpoint_failures = Gauge(
            "gonghao_sqlite_wal_checkpoint_failures",
            "Syncs and checkpoint rounds that did not complete since start (each spell is logged)", registry=r)
        self.wal_checkpoint_seconds = Gauge(
            "gonghao_sqlite_wal_checkpoint_last_seconds", "How long the last checkpoint took", registry=r)
        self.config_version = Gauge(
            "gonghao_config_version_info", "The live config version (label), always 1", ["version"],
            registry=r)
        # Series that exist from the start at 0, so that rate() and alerts see them before the first event.
        for conversation in ("group", "private"):
            self.messages_in.labels(conversation)
        for result in _RELOAD_RESULTS:
            self.config_reloads.labels(result)

    # -- events (call after the deciding transaction committed) --------------------------------------
    def message_in(self, *, private: bool) -> None:
        self.messages_in.labels("private" if private else "group").inc()

    def message_handled(self, outcome: str) -> None:
        """Count one pipeline outcome; an ``ack_acknowledged`` outcome is also an acknowledgement."""
        kind = outcome_kind(outcome)
        self.messages_handled.labels(kind).inc()
        if kind == "ack_acknowledged":
            self.acknowledgements.inc()

    def incident_opened(self, category: str, pings: int) -> None:
        self.incidents_opened.labels(category).inc()
        if pings:
            self.pings_queued.inc(pings)

    def acknowledged(self) -> None:
        """For acknowledgements that do not come through :meth:`message_handled` (none yet)."""
        self.acknowledgements.inc()

    def sent(self, kind: str) -> None:
        self.outbox_sent.labels(kind).inc()

    def send_failed(self, kind: str, *, final: bool) -> None:
        self.outbox_failed.labels(kind, "true" if final else "false").inc()

    def config_reload(self, result: str) -> None:
        if result not in _RELOAD_RESULTS:
            raise ValueError(f"reload result must be one of {_RELOAD_RESULTS}, got {result!r}")
        self.config_reloads.labels(result).inc()

    # -- scrape --------------------------------------------------------------------------------------
    async def refresh(self, station: Station, connection: ConnectionFigures) -> None:
        """Set the gauges that describe the present: outbox depth (one COUNT), connection, intake, config."""
        async with station.db.session() as session:
            pending = await session.scalar(
                select(func.count()).select_from(OutboxMessage).where(
                    OutboxMessage.account == station.id, OutboxMessage.status == OutboxStatus.pending)
            )
            # what an alert wants: a ping stuck for minutes (retrying, or a send hung), whatever the cause;
            # broadcast copies are left out, as pacing keeps a long warning's last copies waiting for hours
            oldest_urgent = await session.scalar(
                select(func.min(OutboxMessage.created_at)).where(
                    OutboxMessage.account == station.id,
                    OutboxMessage.status.in_([OutboxStatus.pending, OutboxStatus.sending]),
                    OutboxMessage.priority <= PRIORITY_URGENT)
            )
        self.outbox_pending.set(pending or 0)
        self.outbox_oldest_urgent.set(
            max(0.0, (station.now() - oldest_urgent).total_seconds()) if oldest_urgent is not None else 0.0)
        self.puppet_connected.set(1 if connection.connected else 0)
        self.reconnects.set(connection.reconnects)
        self.liveness_failures.set(connection.liveness_failures)
        since = connection.seconds_since_event
        self.seconds_since_event.set(-1 if since is None else since)
        self.pending_events.set(connection.pending_events)
        self.unloadable.set(connection.unloadable)
        self.intake_backlog.set(connection.intake_backlog)
        self.helper_running.set(1 if connection.helper_running else 0)
        self.helper_loads.set(connection.helper_loads)
        self.helper_fallbacks.set(connection.helper_fallbacks)
        self.helper_engaged.set(1 if connection.helper_engaged else 0)
        self.loop_stalls.set(connection.loop_stalls)
        self.loop_stalled_seconds.set(connection.loop_stalled_seconds)
        checkpointer = station.db.checkpointer
        if checkpointer is not None:
            self.wal_syncs.set(checkpointer.syncs)
            self.wal_checkpoints.set(checkpointer.checkpoints)
            self.wal_checkpoint_failures.set(checkpointer.failures)
            self.wal_checkpoint_seconds.set(checkpointer.last_seconds)
        self.config_version.clear()
        self.config_version.labels(station.current.version).set(1)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
