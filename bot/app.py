"""Assembly of one running station: config, database, connection, outbox sender, and (without a token)
the built-in sandbox. Production, sandbox and tests all start here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from bot.config.loader import ConfigError, ConfigIssue, load_config
from bot.config.schema import Config
from bot.connection import Connection, ConnectionFailed
from bot.scheduler import run_timers
from bot.sender import run_sender
from handlers import pipeline
from handlers.inbound import Inbound
from handlers.metrics import Metrics
from handlers.runtime import Clock, ConfigVersion, Station, system_clock
from models.db import Database, SqliteSync
from models.migrate import SchemaOutdated, ensure_current, head_revision

if TYPE_CHECKING:
    from bot.sandbox import Sandbox
    from bot.web.server import AdminWeb

log = logging.getLogger(__name__)

# Loaded messages waiting for the pipeline; when it is full the connection's loaders wait (backpressure
# down to a queue of event ids), so memory stays bounded in a flood.
INTAKE_QUEUE_SIZE = 1024
# At most this many messages in one transaction: large enough to amortise the commit under load, small
# enough that a batch stays well under a second.
MAX_BATCH = 256
# Under steady traffic (messages closer than LINGER_BELOW_GAP apart on average) the intake holds chit-chat
# up to LINGER_SECONDS for company before a batch: a transaction costs ~0.6-0.8 ms however few messages
# it holds (SQLite, ~0.1 ms per message more; the commit's fsync holds the loop), so at 50-400 messages a
# second batches of several instead of one leave the loop free for what matters. Only chit-chat waits: a
# report, a question or an officer's command ends the wait the moment it arrives, and quiet groups (the
# usual case) never wait.
LINGER_SECONDS = 0.025
LINGER_BELOW_GAP = 0.020
DATABASE_RETRY_SECONDS = 600
DRAIN_ON_STOP_SECONDS = 10


@dataclass(frozen=True)
class PuppetTarget:
    token: str
    endpoint: str


def puppet_for(config: Config) -> PuppetTarget:
    """A station's own account from its `puppet` section (district mode)."""
    assert config.puppet is not None
    token = os.environ.get(config.puppet.token_env)
    if not token:
        raise ConnectionFailed(f"station {config.station.id}: environment variable {config.puppet.token_env} "
                               "(its puppet token) is not set")
    return PuppetTarget(token, config.puppet.endpoint)


def puppet_from_env() -> PuppetTarget | None:
    token = os.environ.get("WECHATY_PUPPET_SERVICE_TOKEN")
    if not token:
        return None
    endpoint = os.environ.get("WECHATY_PUPPET_SERVICE_ENDPOINT")
    if not endpoint:
        raise ConnectionFailed(
            "WECHATY_PUPPET_SERVICE_TOKEN is set but WECHATY_PUPPET_SERVICE_ENDPOINT is not: set it to the "
            "puppet service's host:port (we never ask a public discovery service)"
        )
    return PuppetTarget(token, endpoint)


class App:
    def __init__(
        self,
        config_path: str | Path,
        *,
        puppet: PuppetTarget | None = None,
        sandbox: Sandbox | None = None,
        clock: Clock = system_clock,
        database_url: str | None = None,
        sqlite_sync: SqliteSync | None = None,
        watch: bool = True,
        peers: dict[str, ConfigVersion] | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.puppet = puppet
        self.sandbox = sandbox
        self.clock = clock
        self.database_url = database_url
        self.sqlite_sync = sqlite_sync  # with database_url: a district file's database settings win
        self.watch = watch
        self.peers = peers or {}  # the district's other stations, for district-wide warnings
        self.reloaded = asyncio.Event()  # set whenever a new config version goes live
        self.watching = asyncio.Event()  # set once the config file watcher is running
        self.timers_wake = asyncio.Event()  # set to check due timers now (tests moving a fake clock)
        self.timers_ran = asyncio.Event()  # set after every round of the timer jobs
        self.station: Station | None = None
        self.connection: Connection | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._owns_sandbox = False
        self._intake: asyncio.Queue[pipeline.Prepared] = asyncio.Queue(maxsize=INTAKE_QUEUE_SIZE)
        self._pressing_queued = 0  # messages in the intake queue that need more than their row
        self._pressing_arrived = asyncio.Event()  # ends a linger
        self.lingering = asyncio.Event()  # set while the intake holds chit-chat for company (tests wait on it)
        self._last_arrival = 0.0
        self._mean_gap = 1.0  # seconds between arrivals, exponentially weighted
        self.handled: asyncio.Queue[tuple[Inbound, str]] | None = None  # tests may set one to observe outcomes
        self.metrics = Metrics()
        self.web: AdminWeb | None = None

    async def start(self) -> None:
        """Load and validate the config (raises ConfigError), open the database, connect."""
        text = self.config_path.read_text(encoding="utf-8")
        config = load_config(self.config_path)
        database = Database(self.database_url or config.database.url,
                            sqlite_sync=self.sqlite_sync or config.database.sqlite_sync)
        log.info("config %s, database %s", self.config_path, database.safe_url)
        try:
            schema = await ensure_current(database)
        except SchemaOutdated:
            await database.close()
            raise
        if schema == "created":
            log.info("created the database schema (revision %s)", head_revision())
        self.station = Station(ConfigVersion.build(config, text), database, self.clock, metrics=self.metrics,
                               peers=self.peers)
        log.info("config version %s live (%s routes, %s keywords)", self.station.current.version,
                 sum(1 for _ in self.station.current.router.all_routes()), self.station.current.router.keyword_count)

        target = self.puppet
        if target is None:
            if self.sandbox is None:
                from bot.sandbox import Sandbox, load_world

                self.sandbox = Sandbox(load_world(None), token=f"sandbox-{secrets.token_hex(8)}")
                self._owns_sandbox = True
                await self.sandbox.start()
            # a sandbox handed in by the caller (tests, main.py with fixed ports) is already started
            target = PuppetTarget(self.sandbox.token, self.sandbox.endpoint)

        data_dir = Path(config.data_dir)
        self.connection = Connection(
            account=config.station.id,
            token=target.token,
            endpoint=target.endpoint,
            cache_dir=data_dir / ".wechaty",
            on_inbound=self._on_inbound,
            payload_helper_mode=lambda: self.station.current.config.intake.payload_helper if self.station else "off",
        )
        self._tasks.append(asyncio.create_task(self.connection.run_forever(), name="connection"))
        self._tasks.append(asyncio.create_task(self._run_intake(), name="intake"))
        self._tasks.append(
            asyncio.create_task(run_sender(self.station, self.connection, self.connection.logged_in), name="sender")
        )
        self._tasks.append(
            asyncio.create_task(run_timers(self.station, self.timers_wake, self.timers_ran), name="timers")
        )
        if self.watch:
            self._tasks.append(asyncio.create_task(self.watch_config(), name="config-watch"))
        if config.web.enabled:
            from bot.web import start_admin_web

            self.web = await start_admin_web(self, config.web.host, config.web.port)
            log.info("admin web on %s", self.web.url)

    def reload(self) -> list[ConfigIssue]:
        """Validate the config file again and swap it in between messages; on errors keep the running one.

        Returns the problems found (empty when the new version is live or nothing changed).
        """
        if self.station is None:  # not started yet: start() reads the file anyway
            return []
        try:
            text = self.config_path.read_text(encoding="utf-8")
            config = load_config(self.config_path)
        except OSError as exc:
            issue = ConfigIssue(str(self.config_path), None, "", f"cannot read the file: {exc}")
            log.error("config reload rejected, keeping version %s: %s", self.station.current.version, issue)
            self.metrics.config_reload("failed")
            return [issue]
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("config reload rejected, keeping version %s: %s", self.station.current.version, issue)
            self.metrics.config_reload("failed")
            return exc.issues
        running = self.station.current
        candidate = ConfigVersion.build(config, text)
        if candidate.version == running.version:
            self.metrics.config_reload("unchanged")
            return []
        issues = []
        if config.station.id != running.config.station.id or config.database != running.config.database:
            issues.append(ConfigIssue(str(self.config_path), None, "station.id/database",
                                      "changing the station id or the database needs a restart"))
            log.error("config reload rejected, keeping version %s: %s", running.version, issues[0])
            self.metrics.config_reload("failed")
            return issues
        self.station.current = candidate  # one assignment: each message sees one version whole
        log.info("config version %s live (was %s)", candidate.version, running.version)
        self.metrics.config_reload("ok")
        self.reloaded.set()
        return []

    async def watch_config(self) -> None:
        """Reload whenever the config file changes on disk.

        Watches the folder, not the file: editors often save by writing a new file and renaming it over
        the old one, which a watch on the file itself would lose.
        """
        import watchfiles

        target = self.config_path.resolve()
        async for changes in watchfiles.awatch(
            target.parent, watch_filter=lambda _change, path: Path(path) == target, debounce=300,
            recursive=False, yield_on_timeout=True, rust_timeout=1000,
        ):
            self.watching.set()  # the first (possibly empty) batch means the watcher is live
            if changes:
                self.reload()

    async def _on_inbound(self, inbound: Inbound) -> None:
        assert self.station is not None
        self.metrics.message_in(private=inbound.is_private)
        now = asyncio.get_running_loop().time()
        self._mean_gap = 0.9 * self._mean_gap + 0.1 * min(now - self._last_arrival, 1.0)
        self._last_arrival = now
        prepared = pipeline.prepare(self.station, inbound)  # routing and the rest that needs no database
        if prepared.pressing and not inbound.sender_name and self.connection is not None:
            # a report or a question names its sender in pings and tickets; chit-chat never needed the name
            named = replace(inbound, sender_name=await self.connection.contact_name(inbound.sender_id))
            prepared = replace(prepared, inbound=named)
        await self._intake.put(prepared)
        if prepared.pressing:
            self._pressing_queued += 1
            self._pressing_arrived.set()

    async def _run_intake(self) -> None:
        """The one consumer of loaded messages: whatever is waiting goes through the pipeline as one batch."""
        while True:
            batch = [await self._intake.get()]
            if (not batch[0].pressing and self._pressing_queued == 0 and self._intake.qsize() < MAX_BATCH
                    and self._mean_gap < LINGER_BELOW_GAP):
                self._pressing_arrived.clear()
                self.lingering.set()
                with contextlib.suppress(TimeoutError):  # a report ends the wait: no wait_for task in its way
                    async with asyncio.timeout(LINGER_SECONDS):
                        await self._pressing_arrived.wait()
                self.lingering.clear()
            await self.station.urgent_first.wait_turn()  # type: ignore[union-attr]  # replies and pings first
            while len(batch) < MAX_BATCH and not self._intake.empty():
                batch.append(self._intake.get_nowait())
            self._pressing_queued -= sum(1 for p in batch if p.pressing)
            try:
                outcomes = await self._handle_pressing_first(batch)
                for prepared, outcome in zip(batch, outcomes, strict=True):
                    self.metrics.message_handled(outcome)
                    log.debug("message %s: %s", prepared.inbound.message_id, outcome)
                    if self.handled is not None:
                        self.handled.put_nowait((prepared.inbound, outcome))
            finally:
                for _ in batch:
                    self._intake.task_done()

    async def _handle_pressing_first(self, batch: list[pipeline.Prepared]) -> list[str]:
        """A batch's reports, questions and commands in a transaction of their own, before its chit-chat: the
        reply to a report does not wait for the rest of the batch to be written, and the chit-chat keeps its
        lean path (a single report used to send the whole batch through the ORM, and under heavy traffic
        nearly every batch holds one). Outcomes in the batch's order."""
        pressing = [k for k, prepared in enumerate(batch) if prepared.pressing]
        if not pressing or len(pressing) == len(batch):
            return await self._handle_batch(batch)
        quiet = [k for k, prepared in enumerate(batch) if not prepared.pressing]
        outcomes = [""] * len(batch)
        for part in (pressing, quiet):
            for k, outcome in zip(part, await self._handle_batch([batch[k] for k in part]), strict=True):
                outcomes[k] = outcome
        return outcomes

    async def _handle_batch(self, batch: list[pipeline.Prepared]) -> list[str]:
        assert self.station is not None
        if len(batch) > 1:
            try:
                return await pipeline.handle_prepared(self.station, batch)
            except Exception as exc:  # nothing of the batch was written: take its messages one at a time
                log.warning("a batch of %s messages failed (%s: %s); handling them one by one",
                            len(batch), type(exc).__name__, exc)
        return [await self._handle_with_retry(prepared) for prepared in batch]

    async def _handle_with_retry(self, prepared: pipeline.Prepared) -> str:
        """The puppet service will not deliver a message again, so a database outage must not lose it: keep it
        and retry with backoff (bounded in time; the intake queue bounds memory meanwhile)."""
        assert self.station is not None
        delay, deadline = 0.5, asyncio.get_running_loop().time() + DATABASE_RETRY_SECONDS
        while True:
            try:
                return (await pipeline.handle_prepared(self.station, [prepared]))[0]
            except (DBAPIError, PoolTimeout, OSError, ConnectionError) as exc:
                if asyncio.get_running_loop().time() > deadline:
                    log.error("giving up on message %s after %s s of database errors: %s",
                              prepared.inbound.message_id, DATABASE_RETRY_SECONDS, exc)
                    return "error"
                log.warning("database unavailable (%s); message %s kept, retrying in %.1f s",
                            type(exc).__name__, prepared.inbound.message_id, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception:
                log.exception("handling message %s failed", prepared.inbound.message_id)
                return "error"

    @property
    def intake_backlog(self) -> int:
        """Loaded messages waiting for the pipeline."""
        return self._intake.qsize()

    async def wait_logged_in(self, timeout: float | None = 20) -> None:
        """Until the puppet service logged us in; raises the connection's error if it failed first."""
        assert self.connection is not None
        login = asyncio.ensure_future(self.connection.logged_in.wait())
        connection_task = self._tasks[0]
        done, _ = await asyncio.wait({login, connection_task}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if login in done:
            return
        login.cancel()
        if connection_task in done:
            connection_task.result()  # raises ConnectionFailed (a refused token)
        raise TimeoutError(f"not logged in to the puppet service within {timeout} s "
                           f"(still trying: {self.connection.state}, {self.connection.reconnects} reconnects)")

    async def run_until_stopped(self, stop: asyncio.Event) -> None:
        """Block until ``stop`` is set or the connection ends (which raises ConnectionFailed)."""
        waiter = asyncio.ensure_future(stop.wait())
        connection_task = self._tasks[0]
        done, _ = await asyncio.wait({waiter, connection_task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if connection_task in done:
            connection_task.result()  # only a refused token ends the supervisor

    async def stop(self) -> None:
        if self.web is not None:
            await self.web.stop()
            self.web = None
        if self.connection is not None:
            await self.connection.stop()
        try:  # what was already loaded still gets stored and answered
            await asyncio.wait_for(self._intake.join(), DRAIN_ON_STOP_SECONDS)
        except TimeoutError:
            log.warning("stopping with %s messages not handled", self._intake.qsize())
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._owns_sandbox and self.sandbox is not None:
            await self.sandbox.stop()
        if self.station is not None:
            await self.station.db.close()
