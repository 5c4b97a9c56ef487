"""How closely does a broadcast's real send rate follow the configured pace?

Run:  python benchmarks/bench_pacing.py [--groups 3000] [--interval 0.02] [--jitter 0.01]

Builds a sandbox world and config with N groups, runs the real bot (App, outbox sender, python-wechaty over
gRPC to the in-process sandbox) on the real clock, sends one warning to every group, and reports the
configured mean gap (interval + jitter/2) beside the measured gaps between consecutive group messages as the
sandbox received them (mean, p50, p99, max) and the total time. Scaled-down intervals keep the run short;
the pacing logic is the same at WeChat-safe intervals of seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.app import App, PuppetTarget  # noqa: E402
from bot.sandbox import Sandbox, parse_world  # noqa: E402

BOT = "wxid_gonghao_bot"


def build(groups: int, interval: float, jitter: float, workdir: Path) -> tuple[dict[str, object], Path]:
    world = yaml.safe_load((ROOT / "bot" / "sandbox" / "world.yaml").read_text(encoding="utf-8"))
    members = [c["id"] for c in world["contacts"]]
    world["rooms"] = [{"id": f"g{i:05d}@chatroom", "topic": f"测试群{i:05d}", "owner": "wxid_officer_wang",
                       "members": members} for i in range(groups)]
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    config["groups"] = [{"id": f"g{i:05d}", "room_id": f"g{i:05d}@chatroom", "topic": f"测试群{i:05d}",
                         "officer": "wang"} for i in range(groups)]
    config["data_dir"] = str(workdir / "data")
    config["database"] = {"url": f"sqlite+aiosqlite:///{workdir / 'data' / 'bench.db'}"}
    config["web"] = {"enabled": False}
    config["outbox"] = {"group_interval": f"{interval}s", "group_jitter": f"{jitter}s", "private_interval": "0s",
                        "group_per_minute": 10**9, "group_per_day": 10**9}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return world, path


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=3000)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--jitter", type=float, default=0.01)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gonghao-pacing-"))
    world, config = build(args.groups, args.interval, args.jitter, workdir)
    async with Sandbox(parse_world(world, source="bench"), token="bench-pacing-token") as sandbox:
        app = App(config, puppet=PuppetTarget(sandbox.token, sandbox.endpoint), watch=False)
        await app.start()
        try:
            await app.wait_logged_in()
            await sandbox.say("wxid_officer_zhou", "预警 冒充客服退款是诈骗")
            await sandbox.wait_for("wxid_officer_zhou", lambda m: m["from"] == BOT and "预警草稿" in m["text"],
                                   timeout=60)
            started = time.monotonic()
            await sandbox.say("wxid_officer_zhou", "确认")
            await sandbox.wait_for("wxid_officer_zhou", lambda m: m["from"] == BOT and "发送完成" in m["text"],
                                   timeout=args.groups * (args.interval + args.jitter) * 5 + 120)
            total = time.monotonic() - started
        finally:
            await app.stop()
        stamps = sorted(m["timestamp"] for room in sandbox.world.rooms for m in sandbox.messages(room.id)
                        if m["from"] == BOT)
    gaps = [(b - a) / 1000 for a, b in pairwise(stamps)]
    gaps.sort()
    configured = args.interval + args.jitter / 2
    print(f"groups {args.groups}, delivered {len(stamps)}, total {total:.1f} s")
    print(f"configured mean gap {configured * 1000:.1f} ms (interval {args.interval * 1000:.0f} ms + jitter up to "
          f"{args.jitter * 1000:.0f} ms)")
    print(f"measured gap: mean {statistics.mean(gaps) * 1000:.1f} ms, p50 {gaps[len(gaps) // 2] * 1000:.1f} ms, "
          f"p99 {gaps[int(len(gaps) * 0.99)] * 1000:.1f} ms, max {gaps[-1] * 1000:.1f} ms, "
          f"min {gaps[0] * 1000:.1f} ms")
    print(f"rate: configured {1 / configured:.1f}/s, measured {len(stamps) / total:.1f}/s "
          f"({len(stamps) / total * configured:.1%} of the pace)")


if __name__ == "__main__":
    asyncio.run(main())
