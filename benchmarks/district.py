"""District load: one station account in N residents' groups of M members, the whole bot against the ceiling.

Run (about five minutes with the defaults; everything on 127.0.0.1; every process it starts is stopped on
exit, also when the driver is interrupted or killed):

    python benchmarks/district.py                                  # 100 groups x 300-500 residents
    python benchmarks/district.py --profile                        # + py-spy on both bots
    python benchmarks/district.py --members-min 500 --members-max 500 --census   # memory with everyone seen
    python benchmarks/district.py --seconds 60 --probe-seconds 15 --json out.json --keep   # longer, kept

Processes:

* the sandbox, in its own process (``benchmarks/district_sandbox.py``): the project's puppet service
  (``bot.sandbox.Sandbox``) serving a generated world (``benchmarks/district_world.py``: the default config's
  bot and officers, N groups x M residents), and the residents (``benchmarks/district_traffic.py``): Poisson
  arrivals at a given rate, 2% reports from the labelled positives, 8% labelled negatives, the rest generated
  chit-chat, injected with ``Sandbox.say`` in that process; driven over a JSON-lines control channel of its
  own on 127.0.0.1;
* the bare bot (``benchmarks/bare_bot.py``): python-wechaty 0.10.7 through ``bot.wechaty_compat``, counting
  messages and nothing else: the ceiling any bot on this connection path can reach;
* the bot: ``python main.py --config RUN/config.yaml`` with WECHATY_PUPPET_SERVICE_TOKEN/ENDPOINT pointing at
  the sandbox; the config is ``config.yaml`` with the generated groups, the admin web off, sending pacing off.

What it measures, bare bot first, then the bot, against the same sandbox in the same run:

* start-up: process start to logged in (the bot: to "logged in and listening"); RSS (VmRSS) after login,
  after each phase and at the end, and the peak (VmHWM);
* the highest steady rate each bot keeps up with (the bare bot's is the **ceiling**, the bot's is its
  sustained full-path throughput: gRPC, python-wechaty, storage, routing, outbox): probes of
  ``--probe-seconds`` at Poisson rates, a probe kept up with when everything was handled within
  max(0.5 s, 10% of the probe) after the last emit (see ``Bench.search``);
* the bot at ``--loads`` (fractions of the ceiling) for ``--seconds`` each: completed messages/s
  (messages / (last stored - first emitted), read from the bot's database), the drain time after the last
  emit, and the event-to-reply latency of reports (the sandbox emitting a report to the bot's @-reply
  arriving at the sandbox, both timed in the sandbox process) p50/p99/max, split with the database's
  timestamps into intake (emit -> stored), decide+queue (stored -> outbox claim) and send (claim -> reply
  at the sandbox);
* a queued flood: ``--flood`` messages emitted at once (and ``--ceiling-flood`` for the bare bot): time to
  drain and its rate, beside the steady rate;
* CPU (in % of one core) of the bot, the sandbox, and every other process on the machine per phase: the
  host is shared, and a test suite running beside the benchmark lowers every figure; the driver waits up to
  ``--wait-quiet`` seconds for a quiet machine before it starts.

Each phase waits until the bot has stored every message and its outbox is empty before the next starts.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import district_profile  # noqa: E402
import district_world  # noqa: E402
from machine_info import cpu_model  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_LINE = "logged in and listening"


# ------------------------------------------------------------------------------------------ processes
def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) in MB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def helper_pids(pid: int) -> dict[str, int]:
    """The bot's payload helper process (``intake.payload_helper``), if it has one: ``{"helper": pid}``."""
    children: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(child) for child in (task / "children").read_text().split()]
    except OSError:
        return {}
    return {"helper": children[0]} if children else {}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _die_with_parent() -> None:
    """Children get SIGTERM if this driver dies, whatever way it dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


class Child:
    """A process we started: its output goes to a log file, lines can be awaited."""

    def __init__(
        self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path, log: Path, on_line: Any = None
    ) -> None:
        self.name, self.argv, self.env, self.cwd, self.log_path = name, argv, env, cwd, log
        self.on_line = on_line
        self.process: asyncio.subprocess.Process | None = None
        self.started_wall = 0.0
        self.lines: list[tuple[float, str]] = []
        self._new_line = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        self.started_wall = time.time()
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            preexec_fn=_die_with_parent,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with self.log_path.open("w", encoding="utf-8") as log:
            while raw := await self.process.stdout.readline():
                line = raw.decode("utf-8", "replace").rstrip("\n")
                now = time.time()
                log.write(f"{now:.3f} {line}\n")
                log.flush()
                self.lines.append((now, line))
                if self.on_line is not None:
                    self.on_line(line, now)
                self._new_line.set()
        self._new_line.set()

    async def wait_line(self, needle: str, timeout: float) -> float:
        """Wall time of the first output line containing ``needle``."""
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for when, line in self.lines[checked:]:
                if needle in line:
                    return when
            checked = len(self.lines)
            if self.process is not None and self.process.returncode is not None and self._reader.done():
                raise RuntimeError(
                    f"{self.name} exited ({self.process.returncode}) before {needle!r}; see {self.log_path}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {needle!r} within {timeout} s; see {self.log_path}")
            self._new_line.clear()
            try:
                await asyncio.wait_for(self._new_line.wait(), min(left, 1.0))
            except TimeoutError:
                pass

    async def stop(self, timeout: float = 30) -> tuple[int | None, float]:
        """SIGTERM, then SIGKILL after ``timeout``; (exit code, seconds it took to exit)."""
        process = self.process
        if process is None or process.returncode is not None:
            return (process.returncode if process else None), 0.0
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            code = await process.wait()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return code, time.monotonic() - began

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


class Control:
    """The sandbox runner's control channel: one JSON request, one JSON answer."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port, limit=2**26)

    async def call(self, op: str, timeout: float = 900, **fields: Any) -> dict[str, Any]:
        assert self.reader is not None and self.writer is not None
        self.writer.write((json.dumps({"op": op, **fields}) + "\n").encode())
        await self.writer.drain()
        answer = json.loads(await asyncio.wait_for(self.reader.readline(), timeout))
        if not answer.get("ok"):
            raise RuntimeError(f"sandbox {op}: {answer.get('error')}")
        return answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class BotDatabase:
    """The bot's SQLite file, read-only, to see what it has stored and sent."""

    def __init__(self, path: Path, account: str) -> None:
        self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        self.account = account

    @staticmethod
    def wall(value: str | None) -> float | None:
        return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp() if value else None

    def processed(self, tag: str) -> tuple[int, float | None, float | None]:
        count, first, last = self.connection.execute(
            "SELECT count(*), min(received_at), max(received_at) FROM inbound_messages "
            "WHERE account = ? AND message_id >= ? AND message_id < ?",
            (self.account, f"{tag}-", f"{tag}."),
        ).fetchone()
        return count, self.wall(first), self.wall(last)

    def stored_total(self) -> int:
        return self.connection.execute("SELECT count(*) FROM inbound_messages").fetchone()[0]

    def outbox_busy(self) -> int:
        return self.connection.execute(
            "SELECT count(*) FROM outbox WHERE account = ? AND status IN ('pending', 'sending')",
            (self.account,),
        ).fetchone()[0]

    def outcomes(self, tag: str) -> dict[str, int]:
        rows = self.connection.execute(
            "SELECT CASE WHEN outcome LIKE 'incident:joined:%' THEN 'incident joined' "
            "WHEN outcome LIKE 'incident:%' THEN 'incident opened' "
            "WHEN instr(outcome, ':') > 0 THEN substr(outcome, 1, instr(outcome, ':') - 1) ELSE outcome END, "
            "count(*) "
            "FROM inbound_messages WHERE account = ? AND message_id >= ? AND message_id < ? GROUP BY 1",
            (self.account, f"{tag}-", f"{tag}."),
        ).fetchall()
        return dict(rows)

    def sent_by_kind(self) -> dict[str, int]:
        return dict(
            self.connection.execute(
                "SELECT kind || ':' || status, count(*) FROM outbox WHERE account = ? GROUP BY 1",
                (self.account,),
            )
        )

    def stages(self, samples: list[dict[str, Any]]) -> dict[str, list[float]]:
        """Per replied report: intake (emit -> stored), decide+queue (stored -> outbox claim),
        send (claim -> reply at the sandbox), in seconds; each list in the order of ``samples`` (a sample
        the database cannot place is skipped in all three, and its ``stages`` key is left unset)."""
        out: dict[str, list[float]] = {"intake": [], "decide+queue": [], "send": []}
        for sample in samples:
            received = self.connection.execute(
                "SELECT received_at FROM inbound_messages WHERE account = ? AND message_id = ?",
                (self.account, sample["message_id"]),
            ).fetchone()
            row = self.connection.execute(
                "SELECT claimed_at FROM outbox WHERE account = ? AND sent_message_id = ?",
                (self.account, sample["reply_id"]),
            ).fetchone()
            if not received or not row or not row[0]:
                continue
            stored, claimed = self.wall(received[0]), self.wall(row[0])
            assert stored is not None and claimed is not None
            out["intake"].append(stored - sample["emitted_wall"])
            out["decide+queue"].append(claimed - stored)
            out["send"].append(sample["arrived_wall"] - claimed)
            sample["stages"] = (out["intake"][-1], out["decide+queue"][-1], out["send"][-1])
        return out

    def close(self) -> None:
        self.connection.close()


# ------------------------------------------------------------------------------------------ numbers
def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{1000 * value:.0f}" if value >= 0.01 else f"{1000 * value:.1f}"


def machine() -> dict[str, Any]:
    model = cpu_model()
    from importlib.metadata import version

    try:
        revision = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = ""
    return {
        "revision": revision,
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "sqlite": sqlite3.sqlite_version,
        "wechaty": version("wechaty"),
        "grpclib": version("grpclib"),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all CPUs, every process), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class CpuWindow:
    """CPU used by our processes over a window, in % of one core, and by every other process on the machine
    ("others": a test suite running beside the benchmark skews it; it is reported so that it shows)."""

    def __init__(self, **pids: int) -> None:
        self.pids = {**pids, "driver": os.getpid()}
        self.wall = time.time()
        self.cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.machine = machine_busy_seconds()

    def percent(self, until: float | None = None) -> dict[str, float]:
        if "bot" in self.pids and "helper" not in self.pids:  # intake.payload_helper auto starts it when needed
            if (late := helper_pids(self.pids["bot"]).get("helper")) is not None:
                self.pids["helper"], self.cpu["helper"] = late, 0.0  # started within the window: all of its CPU
        elapsed = max((until or time.time()) - self.wall, 1e-6)
        used = {name: cpu_seconds(pid) - self.cpu[name] for name, pid in self.pids.items()}
        out = {name: round(100 * value / elapsed) for name, value in used.items() if name != "driver"}
        out["others"] = max(
            0, round(100 * (machine_busy_seconds() - self.machine - sum(used.values())) / elapsed)
        )
        out["bot_seconds"] = round(used["bot"], 3)  # CPU seconds: per message, robust to a busy machine
        if "helper" in used:
            out["helper_seconds"] = round(used["helper"], 3)
        return out


async def quiet_machine(limit: float, log: Any) -> float:
    """Wait up to ``limit`` s for other processes to use < 25% of a core; returns what they used last."""
    deadline = time.monotonic() + limit
    while True:
        before = machine_busy_seconds()
        await asyncio.sleep(1.0)
        others = 100 * (machine_busy_seconds() - before)
        if others < 25 or time.monotonic() >= deadline:
            if others >= 25:
                log(
                    f"other processes use {others:.0f}% of a core: the figures will be lower than on a "
                    "quiet machine"
                )
            return others
        log(f"other processes use {others:.0f}% of a core; waiting for a quieter machine")
        await asyncio.sleep(4.0)


# ------------------------------------------------------------------------------------------ the run
def run_directory(workdir: str | None, prefix: str) -> Path:
    """``--workdir`` if given (kept), else a fresh temporary directory."""
    directory = Path(workdir).resolve() if workdir else Path(tempfile.mkdtemp(prefix=prefix))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_dir = run_directory(args.workdir, "gonghao-district-")
        self.token = f"district-{secrets.token_hex(8)}"
        self.control = Control()
        self.children: list[Child] = []
        self.sandbox: Child | None = None
        self.endpoint = ""
        self.results: dict[str, Any] = {
            "machine": machine(),
            "params": {k: v for k, v in vars(args).items() if k not in ("json",)},
        }
        self.bare_count = {"n": 0, "last_wall": 0.0}
        self.spies: list[asyncio.subprocess.Process] = []

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WECHATY_")}
        env.update(
            WECHATY_PUPPET_SERVICE_TOKEN=self.token,
            WECHATY_PUPPET_SERVICE_ENDPOINT=self.endpoint,
            PYTHONUNBUFFERED="1",
        )
        return env

    async def spawn(self, name: str, argv: list[str], on_line: Any = None) -> Child:
        child = Child(
            name, argv, env=self.env(), cwd=self.run_dir, log=self.run_dir / f"{name}.log", on_line=on_line
        )
        self.children.append(child)
        await child.start()
        return child

    # -- the sandbox -----------------------------------------------------------------------------
    async def start_sandbox(self) -> None:
        a = self.args
        began = time.perf_counter()
        world, config = district_world.build(a.groups, a.members_min, a.members_max, a.seed)
        config.setdefault("database", {})["sqlite_sync"] = a.sqlite_sync
        config.setdefault("intake", {})["payload_helper"] = a.payload_helper
        (self.run_dir / "world.json").write_text(json.dumps(world, ensure_ascii=False), encoding="utf-8")
        self.config_path = district_world.write_config(config, self.run_dir)
        self.account = config["station"]["id"]
        residents = sum(len(r["members"]) for r in world["rooms"])
        self.log(
            f"world: {len(world['rooms'])} groups, {residents} memberships, {len(world['contacts'])} "
            "contacts; "
            f"run directory {self.run_dir}"
        )
        self.sandbox = await self.spawn(
            "sandbox",
            [
                sys.executable,
                str(HERE / "district_sandbox.py"),
                "--world",
                str(self.run_dir / "world.json"),
                "--token",
                self.token,
                "--seed",
                str(a.seed),
                "--report-share",
                str(a.report_share),
                "--negative-share",
                str(a.negative_share),
            ],
        )
        await self.sandbox.wait_line('"endpoint"', 120)
        ready = json.loads(next(line for _, line in self.sandbox.lines if '"endpoint"' in line))
        self.endpoint = ready["endpoint"]
        await self.control.connect(ready["control"])
        self.results["sandbox"] = {
            "contacts": ready["contacts"],
            "rooms": ready["rooms"],
            "memberships": residents,
            "build_s": ready["build_s"],
            "ready_s": round(time.perf_counter() - began, 2),
        }
        self.log(f"sandbox ready on {self.endpoint} in {time.perf_counter() - began:.1f} s")

    async def start_profiler(self, name: str, pid: int) -> None:
        if not self.args.profile:
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = self.run_dir / f"profile-{name}.txt"
        process = await asyncio.create_subprocess_exec(
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(self.args.profile_rate),
            "--format",
            "raw",
            "--output",
            str(out),
            "--idle",
            "--threads",
            "--full-filenames",
            *(["--native"] if self.args.profile_native else []),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=(self.run_dir / f"py-spy-{name}.log").open("w"),
            preexec_fn=_die_with_parent,
        )
        self.spies.append(process)
        await asyncio.sleep(1.0)  # attached

    async def stop_profilers(self) -> None:
        for process in self.spies:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(process.wait(), 60)
                except TimeoutError:
                    process.kill()
        self.spies.clear()

    # -- the bare bot --------------------------------------------------------------------------------
    def _bare_line(self, line: str, _when: float) -> None:
        if line.startswith('{"n"'):
            data = json.loads(line)
            self.bare_count.update(n=data["n"], last_wall=data["last_wall"])

    async def bare_drain(self, expected: int) -> float:
        """Until the bare bot counted ``expected`` messages; returns when it counted the last."""
        stalled_since, seen = time.monotonic(), -1
        while self.bare_count["n"] < expected:
            if self.bare_count["n"] != seen:
                seen, stalled_since = self.bare_count["n"], time.monotonic()
            elif time.monotonic() - stalled_since > self.args.stall_timeout:
                raise TimeoutError(f"bare bot stuck at {seen}/{expected} messages")
            await asyncio.sleep(0.05)
        return self.bare_count["last_wall"]

    async def bare(self) -> dict[str, Any]:
        a = self.args
        out: dict[str, Any] = {}
        bot = await self.spawn(
            "bare",
            [
                sys.executable,
                str(HERE / "bare_bot.py"),
                "--cache-dir",
                str(self.run_dir / "bare-cache"),
                "--exit-on-stdin-eof",
                "--max-in-flight",
                str(a.bare_max_in_flight),
            ],
            self._bare_line,
        )
        login = await bot.wait_line('"event": "login"', 120)
        out["startup_s"] = login - bot.started_wall
        await self.control.call("wait_connected", timeout=60)
        out["rss_login"] = proc_memory(bot.pid)
        self.log(
            f"bare bot logged in after {out['startup_s']:.2f} s, RSS "
            f"{out['rss_login'].get('VmRSS', 0):.0f} MB"
        )
        expected = 0
        warm = await self.control.call("load", tag="bare-warm", rate=a.warmup_rate, seconds=a.warmup_seconds)
        expected += warm["emitted"]
        await self.bare_drain(expected)
        await self.start_profiler("bare", bot.pid)

        self.bare_expected = expected
        if a.census:
            began, total = time.time(), 0
            while True:
                chunk = await self.control.call("census", tag="bare-census", count=a.census_chunk)
                self.bare_expected += chunk["emitted"]
                total += chunk["emitted"]
                last = await self.bare_drain(self.bare_expected)
                if not chunk["left"]:
                    break
            out["census"] = {
                "messages": total,
                "seconds": last - began,
                "rate": total / (last - began),
                "memory": proc_memory(bot.pid),
            }
            await self.control.call("census_reset")
            self.log(
                f"bare census: all {total} residents spoke once in {last - began:.0f} s; "
                f"RSS {out['census']['memory'].get('VmRSS', 0):.0f} MB"
            )
        out["search"] = await self.search(
            "bare", lambda tag, rate: self.probe_bare(bot, tag, rate), a.search_start
        )
        ceiling = out["search"]["rate"]
        self.log(f"bare ceiling (highest steady rate kept up with): {ceiling:.0f} msg/s")

        if a.ceiling_flood:
            cpu = CpuWindow(bot=bot.pid, sandbox=self.sandbox.pid)
            flood = await self.control.call("flood", tag="bare-flood", count=a.ceiling_flood)
            self.bare_expected += flood["emitted"]
            last = await self.bare_drain(self.bare_expected)
            out["flood"] = {
                "messages": flood["emitted"],
                "seconds": last - flood["start_wall"],
                "rate": flood["emitted"] / (last - flood["start_wall"]),
                "emit_seconds": flood["emit_seconds"],
                "cpu_percent": (used := cpu.percent(last)),
                "cpu_ms_per_message": 1000 * used["bot_seconds"] / flood["emitted"],
            }
            self.log(
                f"bare flood: {flood['emitted']} queued messages drained in {out['flood']['seconds']:.2f} "
                "s = "
                f"{out['flood']['rate']:.0f} msg/s (CPU {out['flood']['cpu_percent']})"
            )
        await self.stop_profilers()
        out["rss_end"] = proc_memory(bot.pid)
        code, took = await bot.stop()
        out["exit"] = {"code": code, "seconds": took}
        return out

    async def probe_bare(self, bot: Child, tag: str, rate: float) -> dict[str, Any]:
        cpu = CpuWindow(bot=bot.pid, sandbox=self.sandbox.pid)
        steady = await self.control.call("load", tag=tag, rate=rate, seconds=self.args.probe_seconds)
        self.bare_expected += steady["emitted"]
        last = await self.bare_drain(self.bare_expected)
        used = cpu.percent(last)
        return {
            "cpu_ms_per_message": 1000 * used["bot_seconds"] / steady["emitted"],
            "tag": tag,
            "requested_rate": rate,
            "offered_rate": steady["offered_rate"],
            "emitted": steady["emitted"],
            "rate": steady["emitted"] / (last - steady["start_wall"]),
            "drain_s": last - steady["end_wall"],
            "cpu_percent": used,
            "lag_p99_ms": steady["lag_p99_ms"],
        }

    async def search(self, name: str, probe: Any, start: float) -> dict[str, Any]:
        """The highest steady rate the bot keeps up with: a probe of ``--probe-seconds`` at a rate is kept up
        when the bot has handled everything within max(0.5 s, 10% of the probe) after the last emit (a bot
        falling behind builds a backlog that takes longer); x1.6 up while kept up, /1.6 down while not, then
        geometric bisection to within 12%. The result is the offered rate of the best probe kept up with.

        A probe that falls behind is tried again at the same rate (``--retry-behind`` times, within the probe
        budget) and counts as behind only if every try was: python-wechaty's task per event can collapse at a
        rate it keeps up with at other times, and one unlucky probe should not set the ceiling. (In session 7
        every rate that fell behind once fell behind again; the ceiling's swings between runs come from the
        machine, not from single probes.) Both bots are searched the same way."""
        a = self.args
        probes: list[dict[str, Any]] = []
        good: dict[str, Any] | None = None
        bad: dict[str, Any] | None = None
        rate = start
        tries_at_rate = 0
        for index in range(a.search_probes):
            result = await probe(f"{name}-s{index}", rate)
            offered = result["offered_rate"]
            result["sandbox_limited"] = offered < 0.9 * rate and (result.get("lag_p99_ms") or 0) > 50
            result["kept_up"] = result["drain_s"] <= max(0.5, 0.1 * a.probe_seconds)
            probes.append(result)
            self.log(
                f"{name} probe {index}: asked {rate:.0f} msg/s, offered {offered:.0f}, completed "
                f"{result['rate']:.0f}, drained {result['drain_s']:.2f} s after the last emit: "
                f"{'kept up' if result['kept_up'] else 'fell behind'}"
                + (" (the sandbox could not offer the rate)" if result["sandbox_limited"] else "")
                + (f"; report->reply p99 {ms(result['latency']['p99'])} ms" if "latency" in result else "")
            )
            if result["sandbox_limited"]:
                break
            if not result["kept_up"] and tries_at_rate < a.retry_behind:
                tries_at_rate += 1  # the same rate again; the last try is the one judged
                continue
            tries_at_rate = 0
            if result["kept_up"]:
                if good is None or offered > good["offered_rate"]:
                    good = result
            elif bad is None or offered < bad["offered_rate"]:
                bad = result
            if good and bad:
                if bad["offered_rate"] <= 1.12 * good["offered_rate"]:
                    break
                rate = (good["offered_rate"] * bad["offered_rate"]) ** 0.5
            elif good:
                rate *= 1.6
            else:
                rate /= 1.6
        best = good["offered_rate"] if good else min(p["rate"] for p in probes)
        return {
            "rate": best,
            "kept_up_at": good["offered_rate"] if good else None,
            "fell_behind_at": bad["offered_rate"] if bad else None,
            "sandbox_limited": any(p["sandbox_limited"] for p in probes),
            "probes": probes,
        }

    # -- the bot ---------------------------------------------------------------------------------------
    async def drain(self, db: BotDatabase, tag: str, expected: int) -> tuple[int, float | None, float | None]:
        """Until the bot stored all ``expected`` messages of ``tag`` and its outbox is empty. Gives up when no
        message was stored for ``--stall-timeout`` s (a message the bot failed to handle is never stored:
        the caller reports the difference as lost), or the outbox did not empty within that time."""
        stalled_since, seen = time.monotonic(), -1
        while True:
            count, first, last = db.processed(tag)
            busy = db.outbox_busy()
            if count >= expected and busy == 0:
                return count, first, last
            if count != seen:
                seen, stalled_since = count, time.monotonic()
            elif time.monotonic() - stalled_since > self.args.stall_timeout:
                self.log(
                    f"{tag}: gave up waiting after {self.args.stall_timeout:.0f} s without progress: "
                    f"{count}/{expected} stored, {busy} outbox rows pending"
                )
                return count, first, last
            await asyncio.sleep(0.25)

    async def phase(
        self,
        db: BotDatabase,
        bot: Child,
        tag: str,
        *,
        rate: float = 0.0,
        seconds: float = 0.0,
        flood: int = 0,
        quiet: bool = False,
    ) -> dict[str, Any]:
        cpu = CpuWindow(bot=bot.pid, sandbox=self.sandbox.pid, **helper_pids(bot.pid))
        if flood:
            emitted = await self.control.call("flood", tag=tag, count=flood)
        else:
            emitted = await self.control.call("load", tag=tag, rate=rate, seconds=seconds)
        count, _first, last = await self.drain(db, tag, emitted["emitted"])
        drained = time.time()
        await asyncio.sleep(0.5)  # replies sent just now reach the sandbox
        got = await self.control.call("results", tag=tag)
        latencies = [s["latency"] for s in got["samples"]]
        stages = db.stages(got["samples"])
        start = emitted["start_wall"]
        out = {
            "tag": tag,
            "offered_rate": emitted.get("offered_rate"),
            "emitted": emitted["emitted"],
            "kinds": {k: v for k, v in emitted["counts"].items() if k in ("report", "negative", "chat")},
            "stored": count,
            "lost": emitted["emitted"] - count,
            "rate": count / (last - start) if last and last > start else 0.0,
            "seconds": (last - start) if last else None,
            "drain_s": (last - emitted["end_wall"]) if last else float("inf"),
            "emit_seconds": emitted.get("emit_seconds", emitted.get("seconds")),
            "lag_p99_ms": emitted.get("lag_p99_ms"),
            "replies": len(latencies),
            "unanswered_reports": got["unanswered"],
            "unmatched_group_messages": got["counts"].get("bot_group_unmatched", 0),
            "bot_private_messages": got["counts"].get("bot_private", 0),
            "outcomes": db.outcomes(tag),
            "latency": {
                "p50": percentile(latencies, 0.5),
                "p99": percentile(latencies, 0.99),
                "max": max(latencies, default=None),
            },
            "stages": {
                name: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99)} for name, v in stages.items()
            },
            # the five slowest replies: when in the phase (s), latency, intake, decide+queue, send (ms)
            "slowest": [
                [round(s["emitted_wall"] - emitted["start_wall"], 2), round(1000 * s["latency"])]
                + [round(1000 * v) for v in s.get("stages", ())]
                for s in sorted(got["samples"], key=lambda s: -s["latency"])[:5]
            ],
            "cpu_percent": (used := cpu.percent(drained)),
            "cpu_ms_per_message": 1000 * used["bot_seconds"] / count if count else None,
            "memory": proc_memory(bot.pid),
            **({"helper_memory": proc_memory(pid)} if (pid := helper_pids(bot.pid).get("helper")) else {}),
            "stored_total": db.stored_total(),
        }
        if quiet:
            return out
        self.log(
            f"{tag}: offered {out['offered_rate'] or 0:.0f} msg/s, {count}/{emitted['emitted']} stored, "
            f"completion {out['rate'] or 0:.0f} msg/s, drained {out['drain_s'] or 0:.2f} s after the last "
            "emit; "
            f"report->reply p50 {ms(out['latency']['p50'])} ms p99 {ms(out['latency']['p99'])} ms "
            f"({len(latencies)} replies); CPU {out['cpu_percent']}; RSS "
            f"{out['memory'].get('VmRSS', 0):.0f} MB"
        )
        return out

    async def full(self, ceiling: float) -> dict[str, Any]:
        a = self.args
        out: dict[str, Any] = {"phases": []}
        bot = await self.spawn(
            "bot", [sys.executable, str(ROOT / "main.py"), "--config", str(self.config_path)]
        )
        login = await bot.wait_line(READY_LINE, 180)
        out["startup_s"] = login - bot.started_wall
        await self.control.call("wait_connected", timeout=60)
        out["rss_login"] = proc_memory(bot.pid)
        self.log(
            f"bot logged in after {out['startup_s']:.2f} s, RSS {out['rss_login'].get('VmRSS', 0):.0f} MB"
        )
        db = BotDatabase(self.run_dir / "data" / "gonghao.db", self.account)
        try:
            out["warmup"] = await self.phase(
                db, bot, "full-warm", rate=a.warmup_rate, seconds=a.warmup_seconds
            )
            if a.census:
                began = time.time()
                while True:
                    chunk = await self.control.call("census", tag="full-census", count=a.census_chunk)
                    count, _first, last = await self.drain(db, "full-census", chunk["total_emitted"])
                    self.log(
                        f"bot census: {count} stored, {chunk['left']} residents still to speak, "
                        f"RSS {proc_memory(bot.pid).get('VmRSS', 0):.0f} MB"
                    )
                    if not chunk["left"]:
                        break
                out["census"] = {
                    "messages": count,
                    "seconds": (last or time.time()) - began,
                    "rate": count / ((last or time.time()) - began),
                    "memory": proc_memory(bot.pid),
                    "stored_total": db.stored_total(),
                }
            await self.start_profiler("bot", bot.pid)

            async def probe(tag: str, rate: float) -> dict[str, Any]:
                return await self.phase(db, bot, tag, rate=rate, seconds=a.probe_seconds, quiet=True)

            if a.search_probes:
                out["search"] = await self.search("bot", probe, a.search_start_fraction * ceiling)
                self.log(
                    f"bot sustained (highest steady rate kept up with): {out['search']['rate']:.0f} msg/s "
                    f"= {100 * out['search']['rate'] / ceiling:.0f}% of the bare ceiling"
                )
            for fraction in a.loads:
                rate = fraction * ceiling
                phase = await self.phase(
                    db,
                    bot,
                    f"full-p{round(fraction * 100)}",
                    rate=rate,
                    seconds=min(a.seconds, a.max_phase_messages / rate),
                )
                phase["fraction"] = fraction
                out["phases"].append(phase)
            if a.flood:
                out["flood"] = await self.phase(db, bot, "full-flood", flood=a.flood)
            await self.stop_profilers()
            out["outbox"] = db.sent_by_kind()
        finally:
            db.close()
        out["rss_end"] = proc_memory(bot.pid)
        code, took = await bot.stop()
        out["exit"] = {"code": code, "seconds": took}
        warnings: dict[str, int] = {}
        for _, line in bot.lines:
            if re.match(r"^[\w.]+(Error|Exception): ", line):  # the last line of a traceback
                text = line
            elif "ERROR" in line or "WARNING" in line:
                text = line.split(" ", 2)[-1]  # without the date and time
            else:
                continue
            key = re.sub(r"<[^>]*>|[0-9a-f]{8,}|\b[\w-]*-\d{7}\b|\d+", "#", text)[:140]
            warnings[key] = warnings.get(key, 0) + 1
        out["log_warnings"] = sorted(warnings.items(), key=lambda kv: -kv[1])[:12]
        return out

    async def run(self) -> dict[str, Any]:
        try:
            self.results["others_before_percent"] = await quiet_machine(self.args.wait_quiet, self.log)
            await self.start_sandbox()
            if self.args.ceiling:  # an experiment on the bot alone, at loads of a ceiling measured before
                ceiling = self.args.ceiling
            else:
                self.results["bare"] = await self.bare()
                ceiling = self.results["bare"]["search"]["rate"]
            if not self.args.bare_only:
                self.results["full"] = await self.full(ceiling)
            status = await self.control.call("status")
            self.results["sandbox"]["gc2_max_ms"] = status["gc2_max_ms"]
            self.results["sandbox"]["memory_end"] = proc_memory(self.sandbox.pid)
        finally:
            await self.stop_profilers()
            for child in reversed(self.children):
                if child is self.sandbox:
                    try:
                        await asyncio.wait_for(self.control.call("quit"), 5)
                    except Exception:
                        pass
                await child.stop(timeout=20)
            self.control.close()
        if self.args.profile:
            for name in ("bare", "bot"):
                path = self.run_dir / f"profile-{name}.txt"
                if path.exists():
                    self.results[f"profile_{name}"] = district_profile.render(
                        district_profile.summarize(path)
                    )
        return self.results


# ------------------------------------------------------------------------------------------ report
def _latency_cells(phase: dict[str, Any]) -> str:
    stages = phase["stages"]
    return (
        f"{ms(phase['latency']['p50'])} / {ms(phase['latency']['p99'])} / {ms(phase['latency']['max'])} ms | "
        f"{phase['replies']} ({phase['unanswered_reports']}) | "
        f"{ms(stages['intake']['p50'])} / {ms(stages['intake']['p99'])} | "
        f"{ms(stages['decide+queue']['p50'])} / {ms(stages['decide+queue']['p99'])} | "
        f"{ms(stages['send']['p50'])} / {ms(stages['send']['p99'])}"
    )


def _bot_cpu(phase: dict[str, Any]) -> str:
    cpu = phase["cpu_percent"]
    return f"{cpu['bot']} + {cpu['helper']}" if "helper" in cpu else str(cpu["bot"])


def report(results: dict[str, Any]) -> str:
    if "full" not in results or "bare" not in results or "search" not in results["full"]:
        return json.dumps({k: v for k, v in results.items() if k != "params"}, indent=1, default=str)
    m, p = results["machine"], results["params"]
    bare, full = results["bare"], results["full"]
    ceiling = bare["search"]["rate"]
    sustained = full["search"]["rate"]
    flood = full.get("flood")
    lines = [
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}, SQLite "
        f"{m['sqlite']} (sqlite_sync {p.get('sqlite_sync', 'full')}"
        f", payload helper {p.get('payload_helper', 'off')}), "
        f"wechaty {m['wechaty']}, grpclib {m['grpclib']}, kernel {m['kernel']}; "
        f"code {m.get('revision', '?')}",
        f"world: {results['sandbox']['rooms']} groups, {results['sandbox']['memberships']} memberships "
        f"({p['members_min']}-{p['members_max']} residents per group), {results['sandbox']['contacts']} "
        "contacts; "
        f"traffic {100 * p['report_share']:.0f}% reports, {100 * p['negative_share']:.0f}% labelled "
        "negatives, "
        f"the rest chit-chat; seed {p['seed']}",
        "",
        "| | bare python-wechaty | bot (main.py) |",
        "|---|---|---|",
        f"| start-up to logged in | {bare['startup_s']:.2f} s | {full['startup_s']:.2f} s |",
        f"| RSS after login | {bare['rss_login'].get('VmRSS', 0):.0f} MB | "
        f"{full['rss_login'].get('VmRSS', 0):.0f} MB |",
        f"| RSS at the end (peak) | {bare['rss_end'].get('VmRSS', 0):.0f} MB "
        f"({bare['rss_end'].get('VmHWM', 0):.0f} MB) | "
        f"{full['rss_end'].get('VmRSS', 0):.0f} MB ({full['rss_end'].get('VmHWM', 0):.0f} MB) |",
        f"| highest steady rate kept up with ({p['probe_seconds']:.0f} s probes) | **{ceiling:.0f} msg/s** "
        "(ceiling)"
        + (" (sandbox-limited)" if bare["search"]["sandbox_limited"] else "")
        + f" | **{sustained:.0f} msg/s** ({100 * sustained / ceiling:.0f}% of the ceiling) |",
        "| queued flood: messages, time to drain, rate | "
        + (
            f"{bare['flood']['messages']}, {bare['flood']['seconds']:.1f} s, {bare['flood']['rate']:.0f} "
            "msg/s | "
            if bare.get("flood")
            else "– | "
        )
        + (
            f"{flood['stored']}, {flood['seconds']:.1f} s, {flood['rate']:.0f} msg/s "
            f"({100 * flood['rate'] / sustained:.0f}% of its steady rate) |"
            if flood and flood.get("seconds")
            else "– |"
        ),
        *(
            [
                f"| census: every resident once ({bare['census']['messages']} msgs): time, RSS after | "
                f"{bare['census']['seconds']:.0f} s, {bare['census']['memory'].get('VmRSS', 0):.0f} MB | "
                + (
                    f"{full['census']['seconds']:.0f} s, {full['census']['memory'].get('VmRSS', 0):.0f} MB |"
                    if full.get("census")
                    else "– |"
                )
            ]
            if bare.get("census")
            else []
        ),
        f"| exit on SIGTERM | code {bare['exit']['code']}, {bare['exit']['seconds']:.2f} s | "
        f"code {full['exit']['code']}, {full['exit']['seconds']:.2f} s |",
        "",
        "rate searches: offered -> completed msg/s (drain after the last emit, CPU in % of one core: bot "
        "(+ its payload helper) / "
        "sandbox / every other process on the machine, the bot's CPU per message):",
    ]
    for name, search in (("bare", bare["search"]), ("bot", full["search"])):
        lines.append(
            f"  {name}: "
            + "; ".join(
                f"{pr['offered_rate']:.0f} -> {pr['rate']:.0f} ({pr['drain_s']:.1f} s, "
                f"{_bot_cpu(pr)}/{pr['cpu_percent']['sandbox']}/{pr['cpu_percent']['others']}%, "
                f"{pr['cpu_ms_per_message']:.1f} ms CPU/msg)"
                f"{'' if pr['kept_up'] else ' behind'}"
                for pr in search["probes"]
            )
        )
    lines += [
        "",
        "| bot phase | offered msg/s (% of ceiling) | completed msg/s | lost | drain after last emit | "
        "report→reply p50 / p99 / max "
        "| replies (unanswered reports) | intake p50 / p99 ms | decide+queue p50 / p99 ms | send p50 / p99 "
        "ms "
        "| CPU % bot (+ payload helper) / sandbox / others (bot CPU per msg) | RSS | rows stored |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [
        full["warmup"],
        *[pr for pr in full["search"]["probes"]],
        *full["phases"],
        *([flood] if flood else []),
    ]
    for phase in rows:
        offered = (
            f"{phase['offered_rate']:.0f} ({100 * phase['offered_rate'] / ceiling:.0f}%)"
            if phase.get("offered_rate")
            else f"{phase['emitted']} at once ({phase['emit_seconds']:.1f} s to emit)"
        )
        lines.append(
            f"| {phase['tag']} | {offered} | {phase['rate']:.0f} | {phase['lost']} | "
            f"{phase['drain_s']:.2f} s | "
            f"{_latency_cells(phase)} | "
            f"{_bot_cpu(phase)} / {phase['cpu_percent']['sandbox']} / "
            f"{phase['cpu_percent']['others']} ({phase['cpu_ms_per_message'] or 0:.2f} ms) | "
            f"{phase['memory'].get('VmRSS', 0):.0f}"
            + (f" + {phase['helper_memory'].get('VmRSS', 0):.0f}" if phase.get("helper_memory") else "")
            + f" MB | {phase['stored_total']} |"
        )
    lines.append("")
    lines.append(
        "outcomes: "
        + "; ".join(
            f"{ph['tag']}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(ph["outcomes"].items(), key=lambda kv: -kv[1]))
            for ph in [*full["phases"], *([flood] if flood else [])]
        )
    )
    lines.append(
        "outbox rows (kind:status): "
        + ", ".join(f"{k} {v}" for k, v in sorted(full.get("outbox", {}).items()))
    )
    if full.get("log_warnings"):
        lines.append(
            "bot log warnings/errors (count): " + "; ".join(f"{v}x {k}" for k, v in full["log_warnings"])
        )
    for name in ("bare", "bot"):
        if results.get(f"profile_{name}"):
            lines += [
                "",
                f"profile of the {name} (py-spy, everything after warm-up):",
                results[f"profile_{name}"],
            ]
    return "\n".join(lines)


def add_run_arguments(parser: argparse.ArgumentParser, *, wait_quiet: float, kept: str) -> None:
    """The options every district benchmark shares: patience, the run directory, JSON output."""
    parser.add_argument("--stall-timeout", type=float, default=60,
                        help="give up on a phase when nothing progressed for this long")
    parser.add_argument("--wait-quiet", type=float, default=wait_quiet,
                        help="wait up to this long for other processes to leave the CPUs before starting")
    parser.add_argument("--sqlite-sync", choices=("full", "normal"), default="full",
                        help="the bot's database.sqlite_sync (config.yaml)")
    parser.add_argument("--payload-helper", nargs="?", choices=("off", "on", "auto"), const="on", default="auto",
                        help="the bot's intake.payload_helper (auto, the default; the flag alone: on)")
    parser.add_argument("--workdir",
                        help="run directory (default: a new temporary one, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help=f"keep the run directory ({kept})")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")


def run_bench(bench: Any) -> dict[str, Any] | None:
    """``bench.run()`` on a loop of its own, cancelled by SIGINT/SIGTERM (its children are stopped either
    way); the results, or None when interrupted."""
    loop = asyncio.new_event_loop()
    main_task = loop.create_task(bench.run())
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, main_task.cancel)
    try:
        return loop.run_until_complete(main_task)  # type: ignore[no-any-return]
    except asyncio.CancelledError:
        print(f"interrupted; processes stopped; logs in {bench.run_dir}", file=sys.stderr)
        return None
    except Exception:
        print(f"failed; logs in {bench.run_dir}", file=sys.stderr)
        raise
    finally:
        loop.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--members-min", type=int, default=300, help="residents per group, at least")
    parser.add_argument("--members-max", type=int, default=500, help="residents per group, at most")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--report-share", type=float, default=0.02, help="share of reports (labelled positives)"
    )
    parser.add_argument("--negative-share", type=float, default=0.08, help="share of labelled negatives")
    parser.add_argument(
        "--loads",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[0.25, 0.5, 1.0],
        help="steady loads for the bot, as fractions of the bare ceiling (default 0.25,0.5,1.0)",
    )
    parser.add_argument("--seconds", type=float, default=10, help="length of each steady phase of the bot")
    parser.add_argument(
        "--max-phase-messages",
        type=int,
        default=3000,
        help="shorten a steady phase to this many messages (an overloaded bot drains them slowly)",
    )
    parser.add_argument(
        "--flood", type=int, default=10000, help="messages queued at once for the bot (0: skip)"
    )
    parser.add_argument(
        "--ceiling-flood",
        type=int,
        default=5000,
        help="messages queued at once for the bare bot, to compare with the bot's flood (0: skip)",
    )
    parser.add_argument("--bare-only", action="store_true", help="measure the bare bot only (experiments)")
    parser.add_argument(
        "--ceiling",
        type=float,
        default=0,
        help="an experiment on the bot alone: skip the bare bot and take this as its ceiling (msg/s); "
        "with --search-probes 0 the bot's rate search is skipped too and the phases are printed as JSON",
    )
    parser.add_argument(
        "--bare-max-in-flight",
        type=int,
        default=0,
        help="an experiment: the bare bot loads at most this many messages at once "
        "(0: as python-wechaty does)",
    )
    parser.add_argument(
        "--probe-seconds", type=float, default=5, help="length of each probe of the rate search"
    )
    parser.add_argument("--retry-behind", type=int, default=1,
                        help="try a probe that fell behind this many more times before judging it behind")
    parser.add_argument("--search-probes", type=int, default=8, help="at most this many probes per search")
    parser.add_argument("--search-start", type=float, default=200, help="first probe of the bare bot, msg/s")
    parser.add_argument(
        "--search-start-fraction",
        type=float,
        default=0.25,
        help="first probe of the bot, as a fraction of the bare ceiling",
    )
    parser.add_argument("--warmup-rate", type=float, default=50)
    parser.add_argument("--warmup-seconds", type=float, default=5)
    parser.add_argument("--profile", action="store_true", help="attach py-spy to both bots after warm-up")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="py-spy --native: C frames too (SQLite's busy handler sleeping, fsync)",
    )
    parser.add_argument(
        "--census",
        action="store_true",
        help="before the searches, every resident of every group says one thing (each bot then "
        "holds every contact, the worst case for memory); queued --census-chunk at a time",
    )
    parser.add_argument("--census-chunk", type=int, default=2000)
    add_run_arguments(parser, wait_quiet=60, kept="logs, world, config, DB")
    args = parser.parse_args()

    bench = Bench(args)
    results = run_bench(bench)
    if results is None:
        return 130
    if not args.keep and not args.workdir:
        shutil.rmtree(bench.run_dir, ignore_errors=True)
    text = report(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    if args.keep or args.workdir:
        (bench.run_dir / "results.json").write_text(
            json.dumps(results, ensure_ascii=False, indent=1, default=str), encoding="utf-8"
        )
        (bench.run_dir / "report.md").write_text(text + "\n", encoding="utf-8")
        print(f"\nrun directory kept: {bench.run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
