"""gonghao command line: run the station's public account, check a config, test routing.

Thin on purpose: it parses arguments and calls the code production uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "config.yaml"
# `main.py sandbox` listens on fixed defaults so that a bot can be pointed at it without reading its output;
# the token is no secret: the sandbox only ever serves its made-up world.
SANDBOX_GRPC_PORT = 8788
SANDBOX_DEFAULT_TOKEN = "gonghao-sandbox"
CATEGORY_HELP = (
    "categories: fire, lost_child, scam, none, and the other categories the config defines "
    "(the default config: see `categories:` in config.yaml)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python main.py",
        description="公号 gonghao: a police station's public account in residents' WeChat groups. "
        "With no command, runs the bot: on the puppet service named by WECHATY_PUPPET_SERVICE_TOKEN and "
        "WECHATY_PUPPET_SERVICE_ENDPOINT, or, with no token set, on the built-in sandbox.",
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="path to config.yaml (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # --config is accepted after the command too ("main.py check --config x.yaml")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="path to config.yaml")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="run the bot (the default command)")
    _run_arguments(run)

    commands.add_parser("check", parents=[common],
                        help="validate the config and exit (non-zero with the errors when invalid)")

    route = commands.add_parser(
        "route", parents=[common], help="show which routes a message matches and why",
        description="Explain routing decisions with the matcher production uses. " + CATEGORY_HELP,
    )
    route.add_argument("text", nargs="?", help="the message text")
    route.add_argument("--group", help="group id (routes scoped to groups, and who would be pinged)")
    route.add_argument("--at", help='local time, e.g. "2026-11-28 23:00" (default: now)')
    route.add_argument("--test", metavar="FILE.yaml",
                       help="check a list of expectations (text, optional group/at, category and/or route); "
                       "exits 1 on any mismatch")
    route.add_argument("--jsonl", action="store_true",
                       help='read messages from stdin (plain lines or {"id":..,"text":..}); write one JSON per line')
    oncall = commands.add_parser("oncall", parents=[common],
                                 help="who is on duty and who covers each group, and why")
    oncall.add_argument("--at", help='local time, e.g. "2026-11-28 23:00" (default: now)')
    oncall.add_argument("--group", help="only this group id")

    database = commands.add_parser("db", parents=[common], help="database schema: upgrade to the newest revision")
    database.add_argument("action", choices=["upgrade", "status"])

    commands.add_parser("hash-password", help="prompt for an admin web password and print its hash for web.users")

    casts = commands.add_parser("broadcasts", parents=[common], help="list warnings with their progress; cancel one")
    casts.add_argument("--cancel", type=int, metavar="N", help="cancel broadcast N (what has not gone out yet)")

    sla = commands.add_parser(
        "sla", parents=[common], help="inquiries: response times per group and officer against the 24-hour promise",
        description="Residents' inquiries asked in [--since, --until): how many, median and 95th percentile time "
        "to the first response and to the result, and every breach of the promise (judged as of now).")
    sla.add_argument("--station", help="station id (default: the config's station)")
    sla.add_argument("--since", help='local date or time, e.g. "2026-11-01" (default: 30 days ago)')
    sla.add_argument("--until", help='local date or time, e.g. "2026-12-01 00:00" (default: now)')

    sandbox = commands.add_parser(
        "sandbox", help="run only the built-in sandbox (puppet service + web chat) until Ctrl-C",
        description="Serve the built-in sandbox on its own, without a bot: a Wechaty puppet service and the web "
        "chat over one world. Connect a bot to it as to a real service: WECHATY_PUPPET_SERVICE_ENDPOINT=HOST:PORT "
        "WECHATY_PUPPET_SERVICE_TOKEN=TOKEN python main.py. Its chat log lives in memory and ends with the process.")
    sandbox.add_argument("--world", metavar="FILE", help="sandbox world YAML (default: the built-in one)")
    sandbox.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    sandbox.add_argument("--grpc-port", type=int, default=SANDBOX_GRPC_PORT, metavar="PORT",
                         help="puppet-service port (default: %(default)s; 0 = any free port)")
    sandbox.add_argument("--web-port", type=int, default=8700, metavar="PORT",
                         help="web chat port (default: %(default)s; 0 = any free port)")
    sandbox.add_argument("--token",
                         help="the token bots must present (default: $WECHATY_PUPPET_SERVICE_TOKEN, else the fixed "
                         f"sandbox token {SANDBOX_DEFAULT_TOKEN!r})")

    _run_arguments(parser)  # `python main.py --sandbox-port ...` without `run`
    return parser


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--station", help="with a district file: run only this station (one process per station)")
    parser.add_argument("--sandbox-host", default="127.0.0.1", help="sandbox bind address (default: %(default)s)")
    parser.add_argument("--sandbox-web-port", type=int, default=8700,
                        help="sandbox web chat port (default: %(default)s; 0 = any free port)")
    parser.add_argument("--sandbox-grpc-port", type=int, default=0,
                        help="sandbox puppet-service port (default: any free port)")
    parser.add_argument("--sandbox-world", help="sandbox world YAML (default: the built-in one)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for noisy in ("Wechaty", "PuppetService", "Message", "Contact", "Room", "WechatyPluginManager",
                      "apscheduler", "grpclib", "aiohttp.access", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    command = args.command or "run"
    if command == "check":
        return cmd_check(args.config)
    if command == "route":
        return cmd_route(args)
    if command == "oncall":
        return cmd_oncall(args)
    if command == "sla":
        return cmd_sla(args)
    if command == "db":
        return asyncio.run(cmd_db(args))
    if command == "hash-password":
        from bot.web.auth import main as hash_password_main

        hash_password_main()
        return 0
    if command == "broadcasts":
        return asyncio.run(cmd_broadcasts(args))
    if command == "sandbox":
        return asyncio.run(cmd_sandbox(args))
    return asyncio.run(cmd_run(args))


def _load_or_report(path: str, *, district: bool = False) -> Any:
    """The config (with ``district``, a district file's District when the file lists stations), or None after
    printing what is wrong."""
    from bot.config.district import is_district_file, load_district
    from bot.config.loader import ConfigError, load_config

    try:
        if district and is_district_file(Path(path)):
            return load_district(path)
        return load_config(path)
    except ConfigError as exc:
        print(f"配置无效 / invalid config: {path}", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return None


def cmd_check(path: str) -> int:
    config = _load_or_report(path)
    if config is None:
        return 2
    from handlers.routing import Router

    router = Router(config)
    routes = sum(1 for _ in router.all_routes())
    from handlers.knowledge import check_knowledge

    knowledge, problems = check_knowledge(config.inquiries.knowledge_base, config.inquiries.categories)
    if problems:
        print(f"知识库无效 / invalid knowledge base: {config.inquiries.knowledge_base}", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    entries = len(knowledge.entries) if knowledge else 0
    print(f"{path}: OK — station {config.station.id} ({config.station.name}), {len(config.groups)} groups, "
          f"{len(config.officers)} officers, {routes} routes, {router.keyword_count} keywords, "
          f"{entries} knowledge-base entries")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 2
    from handlers.explain import explain_text, parse_local_time
    from handlers.routing import Router

    router = Router(config)
    if args.test:
        return _route_test(config, router, Path(args.test))
    if args.jsonl:
        for line in sys.stdin:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            ident: Any = None
            text = line
            if line.lstrip().startswith("{"):
                try:
                    item = json.loads(line)
                    ident, text = item.get("id"), str(item.get("text", ""))
                except json.JSONDecodeError:
                    pass
            decision = router.classify(text, args.group)
            first = decision.first
            print(json.dumps({
                "id": ident,
                "category": decision.category,
                "route": first.route.id if first else None,
                "severity": first.route.severity.value if first else None,
            }, ensure_ascii=False), flush=True)
        return 0
    if args.text is None:
        print("route: give a message text, or --jsonl to read stdin", file=sys.stderr)
        return 2
    try:
        at = parse_local_time(config, args.at) if args.at else datetime.now(config.zone)
    except ValueError as exc:
        print(f"route: --at: {exc}", file=sys.stderr)
        return 2
    print(explain_text(config, router, args.text, args.group, at))
    return 0


def cmd_oncall(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 2
    from handlers.explain import parse_local_time
    from handlers.oncall import describe

    try:
        at = parse_local_time(config, args.at) if args.at else datetime.now(config.zone)
    except ValueError as exc:
        print(f"oncall: --at: {exc}", file=sys.stderr)
        return 2
    print(describe(config, at, args.group))
    return 0



def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (a person's Ctrl-C, a service manager's stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop

async def cmd_db(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config, district=True)  # a district's stations share its database
    if loaded is None:
        return 2
    from bot.config.district import District
    from models.db import Database
    from models.migrate import current_revision, head_revision, upgrade

    url = loaded.spec.database.url if isinstance(loaded, District) else loaded.database.url
    database = Database(url)
    try:
        before, _ = await current_revision(database)
        if args.action == "upgrade":
            await upgrade(database)
            after, _ = await current_revision(database)
            print(f"{database.safe_url}: {before or '(empty)'} -> {after}")
        else:
            state = "current" if before == head_revision() else f"behind (code needs {head_revision()})"
            print(f"{database.safe_url}: revision {before or '(none)'}: {state}")
        return 0
    finally:
        await database.close()


def cmd_sla(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 2
    from datetime import timedelta

    from handlers.explain import parse_local_time
    from handlers.sla import format_sla_report, load_sla_report

    now = datetime.now(config.zone)
    try:
        since = parse_local_time(config, args.since) if args.since else now - timedelta(days=30)
        until = parse_local_time(config, args.until) if args.until else now
    except ValueError as exc:
        print(f"sla: {exc}", file=sys.stderr)
        return 2
    if until <= since:
        print("sla: --until must be after --since", file=sys.stderr)
        return 2
    from models.migrate import SchemaOutdated

    try:
        report = asyncio.run(load_sla_report(config, since=since, until=until, now=now, station_id=args.station))
    except SchemaOutdated as exc:
        print(f"sla: {exc}", file=sys.stderr)
        return 2
    print(format_sla_report(report))
    return 0


async def cmd_broadcasts(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 2
    from handlers import broadcasts
    from handlers.runtime import ConfigVersion, system_clock
    from handlers.texts import local_time
    from models.db import Database
    from models.migrate import ensure_current
    from models.tables import Broadcast

    database = Database(config.database.url)
    try:
        await ensure_current(database)
        if args.cancel is not None:
            async with database.session() as session, session.begin():
                target = await session.get(Broadcast, args.cancel)
                if target is None or target.station_id != config.station.id:
                    print(f"broadcasts: no broadcast #{args.cancel} in station {config.station.id}", file=sys.stderr)
                    return 2
                stopped = await broadcasts.cancel(session, ConfigVersion.build(config), target, system_clock())
            print(f"broadcast #{args.cancel} cancelled; {stopped} group(s) not sent")
            return 0
        async with database.session() as session:
            rows = await broadcasts.list_broadcasts(session, config.station.id)
        if not rows:
            print("no broadcasts")
        for broadcast, done in rows:
            print(f"#{broadcast.id} {broadcast.status:<9} {local_time(config, broadcast.created_at)} "
                  f"by {broadcast.created_by}: sent {done.sent}/{done.total}, failed {done.failed}, "
                  f"skipped {done.skipped}, queued {done.queued}, cancelled {done.cancelled} — {broadcast.text[:40]}")
        return 0
    finally:
        await database.close()


def _route_test(config: Any, router: Any, path: Path) -> int:
    from bot.config.loader import ConfigError
    from handlers.route_test import load_expectations, run_expectations

    try:
        items = load_expectations(path)
    except (ConfigError, OSError) as exc:
        print(f"route --test: {exc}", file=sys.stderr)
        return 2
    outcomes = run_expectations(config, router, items)
    failed = [o for o in outcomes if not o.passed]
    for outcome in failed:
        wanted = outcome.expectation
        expected = " ".join(f"{k}={v}" for k, v in (("category", wanted.category), ("route", wanted.route)) if v)
        print(f"FAIL {path}:{outcome.line}: {wanted.text!r}: expected {expected}, "
              f"got category={outcome.category} route={outcome.route or 'none'}")
    print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


async def cmd_sandbox(args: argparse.Namespace) -> int:
    """The built-in sandbox alone, in this process, until SIGINT/SIGTERM: a puppet service for a bot run elsewhere."""
    from bot.sandbox import Sandbox, WorldError, load_world

    try:
        world = load_world(Path(args.world) if args.world else None)
    except WorldError as exc:
        print(f"sandbox: invalid world: {exc}", file=sys.stderr)
        return 2
    if args.token:
        token, source = args.token, "--token"
    elif os.environ.get("WECHATY_PUPPET_SERVICE_TOKEN"):
        token, source = os.environ["WECHATY_PUPPET_SERVICE_TOKEN"], "WECHATY_PUPPET_SERVICE_TOKEN"
    else:
        token, source = SANDBOX_DEFAULT_TOKEN, "the sandbox default, see --help"
    try:
        sandbox = Sandbox(world, token=token, host=args.host, grpc_port=args.grpc_port, web_port=args.web_port)
    except ValueError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    try:
        await sandbox.start()
    except OSError as exc:  # most often a port already in use: a runtime condition, not a usage error
        print(f"sandbox: cannot listen on {args.host}: {exc}", file=sys.stderr)
        return 1
    stop = stop_on_signals()
    try:
        # One line that scripts (and tests) can wait for and parse; the token is named by its source only.
        print(f"沙盒已启动 / sandbox running: puppet service {sandbox.endpoint}  web chat {sandbox.web_url}  "
              f"(token from {source}). Ctrl-C stops it.", flush=True)
        await stop.wait()
    finally:
        await sandbox.stop()
    print("已停止 / stopped.", flush=True)
    return 0


async def cmd_run_district(args: argparse.Namespace) -> int:
    """Several stations from a district file: every one in this process, or only --station."""
    from bot import heap, loop_watch
    from bot.app import App, puppet_for
    from bot.config.district import load_district
    from bot.config.loader import ConfigError
    from bot.connection import ConnectionFailed
    from handlers.runtime import ConfigVersion, clock_from_env

    try:
        district = load_district(args.config)
    except ConfigError as exc:
        print(f"配置无效 / invalid config:\n{exc}", file=sys.stderr)
        return 2
    versions = {config.station.id: ConfigVersion.build(config) for _, config in district.stations}
    chosen = [(path, config) for path, config in district.stations
              if args.station is None or config.station.id == args.station]
    if not chosen:
        print(f"error: no station {args.station!r} in {args.config}; stations: "
              f"{', '.join(district.station_ids())}", file=sys.stderr)
        return 2
    apps = []
    try:
        for path, config in chosen:
            if config.puppet is None:
                print(f"error: {path}: a station run from a district file needs a `puppet:` section", file=sys.stderr)
                return 2
            peers = {sid: v for sid, v in versions.items() if sid != config.station.id}
            apps.append(App(path, puppet=puppet_for(config), database_url=district.spec.database.url,
                            sqlite_sync=district.spec.database.sqlite_sync, clock=clock_from_env(), peers=peers))
    except ConnectionFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = stop_on_signals()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: [app.reload() for app in apps])
    code = 0
    watch: loop_watch.LoopWatch | None = None
    try:
        for app in apps:
            await app.start()
        await asyncio.gather(*(app.wait_logged_in(timeout=None) for app in apps))
        heap.settle()
        watch = loop_watch.watch_running_loop()
        print(f"公号已上线 / {len(apps)} station(s) logged in: "
              f"{', '.join(app.station.id for app in apps if app.station)}", flush=True)
        await asyncio.gather(*(app.run_until_stopped(stop) for app in apps))
    except (ConnectionFailed, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        if watch is not None:
            watch.stop()
        for app in apps:
            await app.stop()
    print("已停止 / stopped.", flush=True)
    return code


async def cmd_run(args: argparse.Namespace) -> int:
    from bot import heap, loop_watch
    from bot.app import App, puppet_from_env
    from bot.config.district import is_district_file
    from bot.config.loader import ConfigError
    from bot.connection import ConnectionFailed
    from models.migrate import SchemaOutdated

    if is_district_file(Path(args.config)):
        return await cmd_run_district(args)
    if args.station:
        print("error: --station goes with a district file (one listing `stations:`)", file=sys.stderr)
        return 2
    if _load_or_report(args.config) is None:
        return 2
    try:
        puppet = puppet_from_env()
    except ConnectionFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sandbox = None
    if puppet is None:
        import secrets

        from bot.sandbox import Sandbox, load_world

        world = load_world(Path(args.sandbox_world) if args.sandbox_world else None)
        sandbox = Sandbox(world, token=f"sandbox-{secrets.token_hex(8)}", host=args.sandbox_host,
                          grpc_port=args.sandbox_grpc_port, web_port=args.sandbox_web_port)
        await sandbox.start()
        print(f"沙盒已启动 / sandbox running: web chat {sandbox.web_url}  (puppet service {sandbox.endpoint})",
              flush=True)

    from handlers.runtime import clock_from_env

    app = App(args.config, puppet=puppet, sandbox=sandbox, clock=clock_from_env())
    stop = stop_on_signals()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, app.reload)  # `kill -HUP <pid>` reloads config.yaml
    code = 0
    watch: loop_watch.LoopWatch | None = None
    try:
        await app.start()
        await app.wait_logged_in(timeout=None)  # keeps trying an unreachable service; a refused token ends it
        heap.settle()
        watch = loop_watch.watch_running_loop()
        print("公号已上线 / the bot is logged in and listening. Ctrl-C stops it.", flush=True)
        if app.web is not None:
            print(f"管理后台 / admin web: {app.web.url}", flush=True)
        await app.run_until_stopped(stop)
    except ConfigError as exc:
        print(f"配置无效 / invalid config:\n{exc}", file=sys.stderr)
        code = 2
    except SchemaOutdated as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except (ConnectionFailed, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        if watch is not None:
            watch.stop()
        await app.stop()
        if sandbox is not None:
            await sandbox.stop()
    print("已停止 / stopped.", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
