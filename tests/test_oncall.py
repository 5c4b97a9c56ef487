"""Who covers a group, as a table over one inline roster (Asia/Shanghai)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bot.config.loader import parse_config
from handlers.oncall import coverage

ROSTER = """\
station: {id: s1, name: 测试派出所}
officers:
  - {id: wang, name: 王警官, wechat_id: wxid_wang, role: community}
  - {id: li, name: 李警官, wechat_id: wxid_li, role: duty}
  - {id: sun, name: 孙警官, wechat_id: wxid_sun, role: duty}
  - {id: zhao, name: 赵所长, wechat_id: wxid_zhao, role: supervisor}
groups:
  - {id: g1, room_id: "g1@chatroom", officer: wang}
  - {id: g2, room_id: "g2@chatroom"}
shifts:
  - {officer: wang, days: [mon, tue, wed, thu, fri], start: "08:30", end: "17:30"}
  - {officer: li, days: [mon, wed, fri], start: "20:00", end: "08:00"}
  - {officer: sun, days: [sat], start: "08:00", end: "20:00"}
"""

CASES = [
    # local time (2026-11-23 is a Monday), group, expected officers
    ("2026-11-23 10:00", "g1", ["wang"]),  # own officer on shift
    ("2026-11-23 08:29", "g1", ["zhao"]),  # before any shift: supervisor fallback
    ("2026-11-23 08:30", "g1", ["wang"]),  # shift start is inclusive
    ("2026-11-23 17:30", "g1", ["zhao"]),  # shift end is exclusive
    ("2026-11-23 10:00", "g2", ["zhao"]),  # a group without its own officer, no duty officer on shift
    ("2026-11-23 23:00", "g1", ["li"]),  # own officer off shift: the duty officer
    ("2026-11-24 03:00", "g1", ["li"]),  # Tuesday 03:00 still belongs to Monday night's shift
    ("2026-11-25 03:00", "g1", ["zhao"]),  # Wednesday 03:00: Tuesday had no night shift
    ("2026-11-28 12:00", "g1", ["sun"]),  # Saturday
    ("2026-11-28 21:00", "g2", ["zhao"]),  # Saturday night: nobody rostered
]


@pytest.mark.parametrize(("local", "group_id", "expected"), CASES)
def test_coverage(local: str, group_id: str, expected: list[str]) -> None:
    config = parse_config(ROSTER)
    group = next(g for g in config.groups if g.id == group_id)
    at = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo("Asia/Shanghai"))
    assert [o.id for o in coverage(config, group, at).officers] == expected
