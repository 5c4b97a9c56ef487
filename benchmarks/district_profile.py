"""Where the bot's time goes: a summary of a ``py-spy record -f raw --idle --threads --full-filenames`` file.

    python benchmarks/district_profile.py RUN/profile.txt

Stacks are ``thread (tid): name;frame;frame;... count`` lines, root first, each frame ``func (path:line)``.

* per thread: the event loop (``MainThread``) versus aiosqlite's worker threads (SQLite statements run there)
  and any other thread; for the event loop, how much was idle (waiting in ``select``) and how much busy;
* the event loop's busy time by the library that holds the CPU (the leaf frame's package): gRPC (grpclib,
  h2, hpack, betterproto), python-wechaty (wechaty, wechaty_puppet, wechaty_puppet_service, pyee),
  SQLAlchemy, aiosqlite's hand-off, Jinja2, asyncio itself, logging, our code…;
* inclusive shares of the stages we care about (a frame anywhere in the stack): receiving a message in
  python-wechaty, the pipeline and its steps, the outbox sender, the timers;
* the top leaf functions.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

LINE = re.compile(r"^(?:thread \((\w+)\): )?(.*?) (\d+)$")
FRAME = re.compile(r"^(.*) \((.*?)(?::(\d+))?\)$")

PACKAGES = [  # (label, path fragments); first match wins, tested on the leaf frame's file
    ("gRPC: grpclib", ("/grpclib/",)),
    ("gRPC: h2/hpack (HTTP/2)", ("/h2/", "/hpack/", "/hyperframe/")),
    ("gRPC: betterproto (protobuf)", ("/betterproto/",)),
    ("python-wechaty", ("/wechaty/", "/wechaty_puppet/", "/wechaty_puppet_service/", "/wechaty_grpc/")),
    ("pyee", ("/pyee/",)),
    ("SQLAlchemy", ("/sqlalchemy/",)),
    ("aiosqlite", ("/aiosqlite/",)),
    ("asyncpg", ("/asyncpg/",)),
    ("Jinja2", ("/jinja2/", "/markupsafe/")),
    ("pydantic", ("/pydantic",)),
    (
        "routing (handlers/routing, normalize)",
        ("/handlers/routing.py", "/handlers/normalize.py", "/handlers/regex_factors.py"),
    ),
    ("gonghao: handlers", ("/handlers/",)),
    ("gonghao: bot", ("/bot/",)),
    ("gonghao: models", ("/models/",)),
    ("logging", ("/logging/",)),
    ("json", ("/json/",)),
    ("asyncio", ("/asyncio/", "/selectors.py")),
    ("dataclasses/typing/copy/enum", ("/dataclasses.py", "/typing.py", "/copy.py", "/enum.py")),
    ("datetime/zoneinfo", ("/datetime.py", "/zoneinfo/")),
]

STAGES = [  # (label, function name, file fragment): inclusive share of the event loop's busy samples
    ("python-wechaty: event stream read (_listen_for_event)", "_listen_for_event", "wechaty_puppet_service"),
    ("message loaders (Connection._load_messages: payloads, to Inbound, into the intake)", "_load_messages",
     "/bot/connection.py"),
    ("  Connection._load (MessagePayload, room payload, cached names)", "_load", "/bot/connection.py"),
    ("  App._on_inbound (prepare; a report's sender name; into the intake queue)", "_on_inbound",
     "/bot/app.py"),
    ("    pipeline.prepare (route match, inquiry detection)", "prepare", "/handlers/pipeline.py"),
    ("intake: App._run_intake (one batch at a time)", "_run_intake", "/bot/app.py"),
    ("  pipeline.handle_prepared", "handle_prepared", "/handlers/pipeline.py"),
    ("    _repeated_texts (duplicate-text query)", "_repeated_texts", "/handlers/pipeline.py"),
    ("    insert_new (INSERT … ON CONFLICT, messages and echo receipts)", "insert_new",
     "/models/message_store.py"),
    ("    sqlite_lane (quiet batches on the driver's connection, commit)", "sqlite_lane",
     "/models/message_store.py"),
    ("    _decide (per message: route, obey, answer)", "_decide", "/handlers/pipeline.py"),
    ("      Router.classify", "classify", "/handlers/routing.py"),
    ("      incidents.report (incident, reply, pings)", "report", "/handlers/incidents.py"),
    ("outbox sender: run_sender", "run_sender", "/bot/sender.py"),
    ("  drain_once: next_pending + caps + claim", "drain_once", "/bot/sender.py"),
    ("  _send (send + mark_sent)", "_send", "/bot/sender.py"),
    ("  Connection.send (mention names + MessageSendText)", "send", "/bot/connection.py"),
    ("timers: run_timers (escalation, digests)", "run_timers", "/bot/scheduler.py"),
    ("SQLAlchemy session commit", "commit", "/sqlalchemy/ext/asyncio/session.py"),
    ("SQLAlchemy execute (async)", "execute", "/sqlalchemy/ext/asyncio/session.py"),
    ("garbage collection (gc.collect in stack)", "collect", ""),
]

IDLE_LEAVES = ("select (", "poll (", "epoll")


def _aiosqlite_wait_line() -> int | None:
    """The line of aiosqlite's worker loop where it waits for work (``tx.get()``): a worker thread sampled
    there is idle; sampled one frame deeper in ``function()`` it is inside a SQLite call (running a statement,
    waiting for the database lock in SQLite's busy handler, or in fsync)."""
    try:
        import inspect

        import aiosqlite.core

        lines, first = inspect.getsourcelines(aiosqlite.core._connection_worker_thread)
    except Exception:
        return None
    return next((first + i for i, line in enumerate(lines) if "tx.get(" in line), None)


AIOSQLITE_WAIT = _aiosqlite_wait_line()


def parse(path: Path) -> list[tuple[str, str, list[tuple[str, str]], int]]:
    """(thread id, thread name, frames root first as (function, "file:line"), samples)."""
    out = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        found = LINE.match(raw)
        if not found:
            continue
        tid, stack, count = found.group(1), found.group(2), int(found.group(3))
        parts = stack.split(";")
        if tid is None:  # recorded without --threads: one thread
            tid, name, frames = "0", "MainThread", []
        else:
            name, frames, parts = parts[0], [], parts[1:]
        for part in parts:
            frame = FRAME.match(part)
            frames.append(
                (frame.group(1), f"{frame.group(2)}:{frame.group(3) or ''}") if frame else (part, "")
            )
        out.append((tid, name, frames, count))
    return out


def _package(file: str) -> str:
    for label, fragments in PACKAGES:
        if any(fragment in file for fragment in fragments):
            return label
    if "site-packages" in file:
        return "other library: " + file.split("site-packages/")[1].split("/")[0]
    if "/lib/python3" in file:
        return "stdlib: " + file.rsplit("/", 1)[-1].split(":")[0]
    return "other: " + file.rsplit("/", 1)[-1].split(":")[0]


def _native(file: str) -> bool:
    """A C frame (py-spy --native): its location is a shared object or an address, not ``file.py:line``."""
    return ".py:" not in file and not file.startswith("<")


NATIVE_WAITS = [  # (label, symbol fragments): what an aiosqlite worker thread was doing inside SQLite
    (
        "SQLite busy handler: sleeping until the write lock is free",
        ("sqlite3InvokeBusyHandler", "BusyCallback"),
    ),
    ("fsync / fdatasync", ("fdatasync", "fsync")),
    ("waiting for the GIL", ("take_gil", "PyEval_RestoreThread", "PyEval_AcquireThread")),
    ("SQLite executing", ("sqlite3",)),
]


def _name(function: str) -> str:
    """``Class.method`` -> ``method``."""
    return function.rsplit(".", 1)[-1]


def _is_idle(frames: list[tuple[str, str]]) -> bool:
    """Waiting: the event loop in select, a worker thread blocked on its queue or a lock."""
    if not frames:
        return True
    function, file = frames[-1]
    name = _name(function)
    if "selectors.py" in file and name in ("select", "poll"):
        return True
    if name == "_connection_worker_thread" and AIOSQLITE_WAIT is not None:
        return file.endswith(f"aiosqlite/core.py:{AIOSQLITE_WAIT}")
    return name in ("wait", "get", "acquire", "_wait_for_tstate_lock", "sleep") and (
        "threading.py" in file or "queue.py" in file or not file
    )


def summarize(path: Path) -> dict[str, Any]:
    stacks = parse(path)
    threads: Counter[str] = Counter()
    main_idle = main_busy = greenlet = 0
    packages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    worker_leaves: Counter[str] = Counter()
    native: Counter[str] = Counter()
    for _tid, name, all_frames, count in stacks:
        frames = [frame for frame in all_frames if not _native(frame[1])]
        if (
            name != "MainThread"
            and len(frames) != len(all_frames)
            and any("aiosqlite" in f for _, f in frames)
        ):
            symbols = " ".join(f for f, _ in all_frames)
            if _is_idle(frames):
                native["idle: waiting for work"] += count
            else:
                label = next(
                    (label for label, keys in NATIVE_WAITS if any(k in symbols for k in keys)), "other"
                )
                native[label] += count
        kind = (
            "event loop (MainThread)"
            if name == "MainThread"
            else "aiosqlite worker threads"
            if any("aiosqlite" in f for _, f in frames)
            else "config watcher (watchfiles via AnyIO, blocked in Rust)"
            if "AnyIO" in name
            else f"other: {name}"
        )
        idle = _is_idle(frames)
        threads[f"{kind}: {'idle' if idle else 'busy'}"] += count
        if name != "MainThread":
            if not idle:
                worker_leaves[
                    " <- ".join(
                        f"{_name(f)} ({_package(p).split(': ')[-1]})" for f, p in reversed(frames[-3:])
                    )
                ] += count
            continue
        if _is_idle(frames):
            main_idle += count
            continue
        main_busy += count
        if frames and not frames[0][0].startswith("<module>"):
            greenlet += count  # SQLAlchemy's sync half runs in a greenlet: py-spy cannot see who awaited it
        function, file = frames[-1]
        packages[_package(file)] += count
        where = file.split("site-packages/")[-1].rsplit(":", 1)[0]
        for prefix in (str(Path(__file__).resolve().parent.parent) + "/", sys.base_prefix + "/lib/"):
            where = where.replace(prefix, "")
        leaves[f"{function} ({where})"] += count
        seen = set()
        for label, function_name, fragment in STAGES:
            if label.startswith("echo receipts") and any(_name(f) == "_store_once" for f, _ in frames):
                continue
            if label not in seen and any(
                _name(f) == function_name and fragment in file for f, file in frames
            ):
                stages[label] += count
                seen.add(label)
    return {
        "threads": dict(sorted(threads.items())),
        "thread_ids": len({tid for tid, *_ in stacks}),
        "main_idle": main_idle,
        "main_busy": main_busy,
        "greenlet": greenlet,
        "packages": packages.most_common(),
        "stages": [(label, stages[label]) for label, *_ in STAGES],
        "leaves": leaves.most_common(25),
        "worker_leaves": worker_leaves.most_common(12),
        "native": native.most_common(),
    }


def render(summary: dict[str, Any]) -> str:
    busy = summary["main_busy"] or 1
    total_main = summary["main_busy"] + summary["main_idle"] or 1
    lines = [
        f"event loop: {summary['main_busy']} busy samples, {summary['main_idle']} idle "
        f"({100 * summary['main_busy'] / total_main:.0f}% busy)"
    ]
    lines.append(
        f"samples per thread kind ({summary['thread_ids']} threads seen, each sampled separately): "
        + ", ".join(f"{k} {v}" for k, v in summary["threads"].items())
    )
    in_sqlite = summary["threads"].get("aiosqlite worker threads: busy", 0)
    if in_sqlite:
        lines.append(
            f"aiosqlite workers inside a SQLite call: {in_sqlite / total_main:.1f} threads on average "
            "at any moment (SQLite runs one write transaction at a time)"
        )
    lines.append("\nevent loop busy time by library holding the CPU (leaf frame):")
    lines += [f"  {100 * n / busy:5.1f}%  {label}" for label, n in summary["packages"] if n / busy >= 0.005]
    lines.append(
        "\ninclusive share of the event loop's busy time (a stage includes the SQLAlchemy work it awaits "
        "only "
        f"up to the greenlet switch: {100 * summary['greenlet'] / busy:.1f}% of the busy time ran inside "
        "SQLAlchemy's greenlets, where py-spy cannot see which stage awaited it):"
    )
    lines += [f"  {100 * n / busy:5.1f}%  {label}" for label, n in summary["stages"]]
    lines.append("\ntop leaf functions (event loop):")
    lines += [f"  {100 * n / busy:5.1f}%  {label}" for label, n in summary["leaves"]]
    if summary.get("native"):
        total = sum(n for _, n in summary["native"]) or 1
        lines.append("\naiosqlite worker threads, native frames (py-spy --native), share of their samples:")
        lines += [f"  {100 * n / total:5.1f}%  {label}" for label, n in summary["native"]]
    if summary["worker_leaves"]:
        lines.append("\nworker threads, busy stacks (innermost 3 frames, samples):")
        lines += [f"  {n:6d}  {label}" for label, n in summary["worker_leaves"]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(summarize(Path(sys.argv[1]))))
