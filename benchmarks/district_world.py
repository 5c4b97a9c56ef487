"""The district load benchmark's generated station: N residents' groups of M members for one account.

One source of truth for both processes: the driver (``district.py``) builds the world and the bot's config
here and writes them into the run directory; the sandbox runner (``district_sandbox.py``) loads the world
from that file.

* The bot and the officers are those of the default ``config.yaml`` (officers' ``wechat_id`` and names).
* Group ``i`` is room ``d{i:03d}@chatroom`` with a unique topic, owned by one of the default community
  officers (alternating), with the duty officers and the supervisors as members (like the default world),
  plus ``M`` residents (``M`` drawn per group between ``members_min`` and ``members_max``).
* The config is ``config.yaml`` with ``groups:`` replaced by the generated ones, the admin web off, and
  sending pacing off, so the benchmark measures the bot and not WeChat's rate limits.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config.yaml"
BOT = {"id": "wxid_gonghao_bot", "name": "花木派出所公号"}  # as bot/sandbox/world.yaml

SURNAMES = list(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦傅方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
GIVEN = list(
    "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华建国文红玉兰梅琴云莲珍凤洁宇浩鑫晨欣怡子涵梓轩佳琪雨婷"
)
STYLES = [
    "{s}{g}",
    "{s}{g}{g2}",
    "老{s}",
    "小{s}",
    "{s}阿姨",
    "{s}师傅",
    "{s}老师",
    "{s}姐",
    "{s}大爷",
    "{s}{g}妈妈",
    "{s}{g}爸爸",
    "{s}奶奶",
    "{s}叔",
]
ESTATES = list("锦绣联洋芳甸花木东城梅园竹园松林枫林桃源樱花海棠银杏金桥世纪碧云仁恒绿洲明珠新苑长岛龙阳杨高")
SUFFIXES = ["小区平安群", "社区警民群", "居民群", "业主群", "邻里群", "街坊群", "楼组群", "花园群"]


def resident_name(rng: random.Random) -> str:
    return rng.choice(STYLES).format(s=rng.choice(SURNAMES), g=rng.choice(GIVEN), g2=rng.choice(GIVEN))


def build(
    groups: int, members_min: int, members_max: int, seed: int, config_path: Path = DEFAULT_CONFIG
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(world data for ``bot.sandbox.parse_world``, config data for ``config.yaml``)."""
    if groups < 1 or members_min < 1 or members_max < members_min:
        raise ValueError("need groups >= 1 and 1 <= members_min <= members_max")
    rng = random.Random(seed)
    base = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    officers = base["officers"]
    community = [o for o in officers if o["role"] == "community"]
    always_in = [o["wechat_id"] for o in officers if o["role"] in ("duty", "supervisor")]
    if not community:
        raise ValueError(f"{config_path} has no community officer to own the groups")

    contacts: list[dict[str, str]] = [
        {"id": o["wechat_id"], "name": o["name"], "role": "officer", "title": o["role"]} for o in officers
    ]
    rooms: list[dict[str, Any]] = []
    group_configs: list[dict[str, Any]] = []
    topics: set[str] = set()
    for i in range(1, groups + 1):
        owner = community[(i - 1) % len(community)]
        while True:
            topic = f"{rng.choice(ESTATES)}{rng.choice(ESTATES)}{rng.choice(SUFFIXES)}"
            if topic not in topics:
                break
            topic = f"{topic}{i}"
            if topic not in topics:
                break
        topics.add(topic)
        room_id = f"d{i:03d}@chatroom"
        size = rng.randint(members_min, members_max)
        residents = []
        for j in range(1, size + 1):
            contact_id = f"wxid_d{i:03d}_{j:03d}"
            contacts.append({"id": contact_id, "name": resident_name(rng), "role": "resident"})
            residents.append(contact_id)
        members = [owner["wechat_id"], *[m for m in always_in if m != owner["wechat_id"]], *residents]
        rooms.append({"id": room_id, "topic": topic, "owner": owner["wechat_id"], "members": members})
        group_configs.append({"id": f"g{i:03d}", "room_id": room_id, "topic": topic, "officer": owner["id"]})

    world = {"bot": dict(BOT), "contacts": contacts, "rooms": rooms}
    config = copy.deepcopy(base)
    config["groups"] = group_configs
    config.setdefault("web", {})["enabled"] = False
    config["outbox"] = {
        "group_interval": "0s",
        "group_jitter": "0s",
        "private_interval": "0s",
        "group_per_minute": 1000000,
        "group_per_day": 100000000,
    }
    # Nobody acknowledges in a benchmark, so every incident of one phase would escalate (P1 after 3 min) in
    # the middle of a later one: hundreds at once, a workload of its own that made a later phase's figures
    # depend on when it ran. The chains' steps start after the run instead.
    for chain in config.get("escalation", {}).get("chains", []):
        for k, step in enumerate(chain.get("steps", [])):
            step["after"] = f"{60 * (k + 1)}m"
    return world, config


def write_config(config: dict[str, Any], directory: Path, database_url: str | None = None) -> Path:
    """The generated config in ``directory``, its data (SQLite file, python-wechaty cache) under it."""
    data = copy.deepcopy(config)
    data["data_dir"] = str(directory / "data")
    data.setdefault("database", {})["url"] = (
        database_url or f"sqlite+aiosqlite:///{directory / 'data' / 'gonghao.db'}"
    )
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
