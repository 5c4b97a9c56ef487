"""The spine's fire scenario against the OFFICIAL Node puppet-service server (wechaty-puppet-service
wrapping wechaty-puppet-mock), with the bot exactly as production runs it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from bot.app import App, PuppetTarget
from models.tables import Incident
from tests.conftest import ROOT, FakeClock, write_config

from .official_server import official_puppet_server

BOT = "wxid_gonghao_bot"
JINXIU = "jinxiu@chatroom"
WANG = "wxid_officer_wang"


def default_world() -> dict[str, Any]:
    """The sandbox's default world (same ids as the default config), in the harness's shape."""
    world = yaml.safe_load((ROOT / "bot" / "sandbox" / "world.yaml").read_text(encoding="utf-8"))
    return {
        "bot": {"id": world["bot"]["id"], "name": world["bot"]["name"]},
        "contacts": [{"id": c["id"], "name": c["name"]} for c in world["contacts"]],
        "rooms": [{"id": r["id"], "topic": r["topic"], "members": r["members"]} for r in world["rooms"]],
    }


async def test_fire_report_reply_ping_and_ack_over_the_official_server(
    tmp_path: Path, clock: FakeClock, default_config_text: str
) -> None:
    async with official_puppet_server(default_world(), tmp_path / "node") as server:
        app = App(write_config(tmp_path, default_config_text), puppet=PuppetTarget(server.token, server.endpoint),
                  clock=clock, watch=False)
        try:
            await app.start()
            await app.wait_logged_in(timeout=30)
            await server.say("wxid_res_01", "楼道闻到一股烟焦味!", room=JINXIU)

            def from_bot(pattern: str) -> Any:
                return lambda m: m["from"] == BOT and pattern in m["text"]

            reply = await server.wait_for(JINXIU, from_bot("119"), timeout=20)
            assert "张阿姨" in reply["text"]
            ping = await server.wait_for(WANG, from_bot("警情"), timeout=20)
            assert "锦绣小区平安群" in ping["text"] and "楼道闻到一股烟焦味!" in ping["text"]

            await server.say(WANG, "收到")
            await server.wait_for(JINXIU, from_bot("王警官已接警"), timeout=20)
            assert app.station is not None
            async with app.station.db.session() as session:
                [incident] = (await session.scalars(select(Incident))).all()
            assert incident.status == "acknowledged" and incident.acknowledged_by == "wang"
            assert f"#{incident.id}" in ping["text"]
        finally:
            await asyncio.wait_for(app.stop(), 30)
