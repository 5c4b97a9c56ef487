"""A district: several stations, each with its own account, sharing one PostgreSQL database — run as one
process per station (`main.py --config district.yaml --station S`), with a district-wide warning that reaches
every station's groups through each station's own account, exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from bot.config.district import load_district
from bot.config.loader import ConfigError
from bot.sandbox import Sandbox, load_world, parse_world
from tests.conftest import ROOT

LUJIAZUI_ROOMS = {"jinxiu@chatroom": "binjiang@chatroom", "lianyang@chatroom": "huamulu@chatroom",
                  "fangdian@chatroom": "yincheng@chatroom"}


def lujiazui_world() -> dict[str, object]:
    world = yaml.safe_load((ROOT / "bot" / "sandbox" / "world.yaml").read_text(encoding="utf-8"))
    world["bot"] = {"id": "wxid_gonghao_lujiazui", "name": "陆家嘴派出所公号"}
    for room in world["rooms"]:
        room["id"] = LUJIAZUI_ROOMS[room["id"]]
        room["topic"] = "陆家嘴" + room["topic"]
    return world


def write_district(tmp: Path, database_url: str, endpoints: dict[str, str]) -> Path:
    base = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    base["web"] = {"enabled": False}
    base["outbox"] = {"group_interval": "0s", "group_jitter": "0s", "private_interval": "0s"}
    stations = tmp / "stations"
    stations.mkdir()
    huamu = dict(base, data_dir=str(tmp / "data-huamu"),
                 puppet={"endpoint": endpoints["huamu"], "token_env": "HUAMU_PUPPET_TOKEN"})
    lujiazui = dict(base, data_dir=str(tmp / "data-lujiazui"), station={"id": "lujiazui", "name": "陆家嘴派出所"},
                    puppet={"endpoint": endpoints["lujiazui"], "token_env": "LUJIAZUI_PUPPET_TOKEN"},
                    groups=[dict(g, room_id=LUJIAZUI_ROOMS[g["room_id"]], topic="陆家嘴" + g["topic"])
                            for g in base["groups"]])
    for name, data in (("huamu", huamu), ("lujiazui", lujiazui)):
        (stations / f"{name}.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    district = tmp / "district.yaml"
    district.write_text(yaml.safe_dump({
        "district": {"id": "pudong", "name": "浦东分局"}, "database": {"url": database_url},
        "stations": ["stations/huamu.yaml", "stations/lujiazui.yaml"]}, allow_unicode=True), encoding="utf-8")
    return district


def test_district_file_errors_name_their_file(tmp_path: Path) -> None:
    district = write_district(tmp_path, "sqlite+aiosqlite:///x.db", {"huamu": "127.0.0.1:1", "lujiazui": "127.0.0.1:2"})
    loaded = load_district(district)
    assert loaded.station_ids() == ["huamu", "lujiazui"]
    assert all(config.database.url == "sqlite+aiosqlite:///x.db" for _, config in loaded.stations)
    broken = tmp_path / "stations" / "lujiazui.yaml"
    broken.write_text(broken.read_text(encoding="utf-8").replace("role: duty", "role: chief", 1), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_district(district)
    assert caught.value.issues[0].file == str(broken) and "role" in caught.value.issues[0].field
    district.write_text(district.read_text(encoding="utf-8").replace("stations/lujiazui.yaml", "stations/huamu.yaml"),
                        encoding="utf-8")
    with pytest.raises(ConfigError, match="station id 'huamu' is also used"):
        load_district(district)


def test_db_upgrade_takes_the_district_file(tmp_path: Path) -> None:
    """`main.py db upgrade --config district.yaml` upgrades the district's one database (the stations'
    files are not needed for it, and a district's admin has no single station config to hand)."""
    import subprocess

    from models.migrate import head_revision

    database = tmp_path / "district.db"
    district = write_district(tmp_path, f"sqlite+aiosqlite:///{database}",
                              {"huamu": "127.0.0.1:1", "lujiazui": "127.0.0.1:2"})
    run = [sys.executable, str(ROOT / "main.py"), "db", "--config", str(district)]
    upgraded = subprocess.run([*run, "upgrade"], capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"(empty) -> {head_revision()}" in upgraded.stdout and str(database) in upgraded.stdout
    status = subprocess.run([*run, "status"], capture_output=True, text=True, timeout=120)
    assert f"revision {head_revision()}: current" in status.stdout


async def test_one_process_per_station_and_a_district_wide_warning(tmp_path: Path, scratch_pg_database: str) -> None:
    huamu = Sandbox(load_world(None), token="huamu-token-0001")
    lujiazui = Sandbox(parse_world(lujiazui_world(), source="lujiazui"), token="lujiazui-token-0002")
    await huamu.start()
    await lujiazui.start()
    district = write_district(tmp_path, scratch_pg_database, {"huamu": huamu.endpoint, "lujiazui": lujiazui.endpoint})
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECHATY_")}
    clock = tmp_path / "clock.txt"
    clock.write_text("2026-11-27T10:00:00+08:00", encoding="utf-8")  # a Friday morning, whenever the test runs
    env.update(HUAMU_PUPPET_TOKEN=huamu.token, LUJIAZUI_PUPPET_TOKEN=lujiazui.token, GONGHAO_CLOCK_FILE=str(clock))
    log = (tmp_path / "bots.log").open("ab")
    processes = []
    try:
        # the first process creates the schema; start the second once the first is in
        for station, sandbox in (("huamu", huamu), ("lujiazui", lujiazui)):
            processes.append(await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "main.py"), "--config", str(district), "--station", station,
                cwd=tmp_path, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT))
            await sandbox.wait_connected(60)
        # each station's own reports stay its own
        await lujiazui.say("wxid_res_01", "楼道闻到一股烟焦味!", room="binjiang@chatroom")
        ping = await lujiazui.wait_for("wxid_officer_wang", lambda m: "警情 #" in m["text"], timeout=60)
        assert "陆家嘴锦绣小区平安群" in ping["text"]
        # a district-wide warning from 花木's anti-fraud officer
        await huamu.say("wxid_officer_zhou", "预警 全区 近期有人冒充“市场监管局”发短信说营业执照要注销，这是诈骗")
        preview = await huamu.wait_for("wxid_officer_zhou", lambda m: "预警草稿" in m["text"], timeout=60)
        assert "全区2个派出所" in preview["text"] and "6个群" in preview["text"]
        await huamu.say("wxid_officer_zhou", "确认")
        done = await huamu.wait_for("wxid_officer_zhou", lambda m: "发送完成" in m["text"], timeout=60)
        assert "成功6个群" in done["text"]

        def copies(sandbox: Sandbox, bot: str) -> Counter[str]:
            return Counter(room.id for room in sandbox.world.rooms for m in sandbox.messages(room.id)
                           if m["from"] == bot and "反诈预警" in m["text"])

        assert copies(huamu, "wxid_gonghao_bot") == Counter({r: 1 for r in LUJIAZUI_ROOMS})
        assert copies(lujiazui, "wxid_gonghao_lujiazui") == Counter({r: 1 for r in LUJIAZUI_ROOMS.values()})
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            await asyncio.wait_for(process.wait(), 30)
        log.close()
        await huamu.stop()
        await lujiazui.stop()
    output = (tmp_path / "bots.log").read_text(encoding="utf-8")
    assert "Traceback" not in output, output[-3000:]
    assert huamu.token not in output and lujiazui.token not in output
