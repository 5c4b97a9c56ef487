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


ROTA = """\
station: {id: s1, name: 测试派出所}
officers:
  - {id: wang, name: 王警官, wechat_id: wxid_wang, role: community}
  - {id: li, name: 李警官, wechat_id: wxid_li, role: duty}
  - {id: sun, name: 孙警官, wechat_id: wxid_sun, role: duty}
  - {id: qian, name: 钱警官, wechat_id: wxid_qian, role: duty}
  - {id: zhao, name: 赵所长, wechat_id: wxid_zhao, role: supervisor}
groups:
  - {id: g1, room_id: "g1@chatroom", officer: wang}
shifts:
  - {officer: wang, days: [mon, tue, wed, thu, fri], start: "08:30", end: "17:30"}
  - {officer: zhao, days: [mon, tue, wed, thu, fri], start: "08:30", end: "17:30", on_holidays: true}
rotations:
  - {id: day, officers: [li, sun, qian], start_date: 2026-11-23, days_each: 2, start: "08:00", end: "20:00"}
  - {id: night, officers: [qian, li], start_date: 2026-11-23, start: "20:00", end: "08:00"}
overrides:
  - {officer: sun, replaces: li, from: "2026-11-24 12:00", to: "2026-11-24 14:00", reason: 换班}
  - {officer: wang, away: true, from: "2026-11-26 08:30", to: "2026-11-26 17:30", reason: 培训}
  - {officer: qian, away: true, from: "2026-11-29", to: "2026-11-30"}
holidays: [2026-11-27]
"""

ROTA_CASES = [
    # local time (2026-11-23 is a Monday), who is on duty (sorted), who covers g1
    ("2026-11-23 09:00", ["li", "wang", "zhao"], ["wang"]),  # day rotation: li for two days
    ("2026-11-24 19:59", ["li"], ["li"]),
    ("2026-11-24 13:00", ["sun", "wang", "zhao"], ["wang"]),  # swap: sun replaces li 12:00-14:00
    ("2026-11-24 18:00", ["li"], ["li"]),  # after the swap li is back
    ("2026-11-25 09:00", ["sun", "wang", "zhao"], ["wang"]),  # third day: next officer
    ("2026-11-23 20:00", ["qian"], ["qian"]),  # night rotation starts with qian, one night each
    ("2026-11-24 07:59", ["qian"], ["qian"]),  # still Monday night's shift after midnight
    ("2026-11-24 20:00", ["li"], ["li"]),  # Tuesday night: li
    ("2026-11-26 10:00", ["sun", "zhao"], ["sun"]),  # wang away for training: the duty officer covers
    ("2026-11-27 10:00", ["qian", "zhao"], ["qian"]),  # public holiday: weekly shifts pause, zhao's runs anyway
    ("2026-11-29 21:00", [], ["zhao"]),  # qian away on her night: nobody on duty, the supervisor
    ("2026-11-22 10:00", [], ["zhao"]),  # before the rotations start
]


@pytest.mark.parametrize(("local", "on_duty", "covers"), ROTA_CASES)
def test_rotations_overrides_holidays(local: str, on_duty: list[str], covers: list[str]) -> None:
    from handlers.oncall import roster

    config = parse_config(ROTA)
    at = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo("Asia/Shanghai"))
    assert sorted(roster(config, at).on) == on_duty
    assert [o.id for o in coverage(config, config.groups[0], at).officers] == covers


def test_oncall_cli_explains_why() -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "oncall", "--config", str(ROOT / "config.yaml"),
                             "--at", "2026-12-03 10:00", "--group", "jinxiu"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "off: wang: override: away" in result.stdout and "市局培训" in result.stdout
    assert "group jinxiu (锦绣小区平安群): 李警官 (li)" in result.stdout
    assert "rotation duty_day" in result.stdout


def test_override_must_end_after_it_starts() -> None:
    from bot.config.loader import ConfigError

    broken = ROTA.replace('from: "2026-11-24 12:00", to: "2026-11-24 14:00"',
                          'from: "2026-11-24 12:00", to: "2026-11-24 11:00"')
    with pytest.raises(ConfigError) as caught:
        parse_config(broken)
    assert caught.value.issues[0].field == "overrides[0]"
    assert "'to' must be after 'from'" in caught.value.issues[0].message
