"""Routing as tables of cases over inline YAML, in the style of Alertmanager's route tests."""

from __future__ import annotations

import pytest

from bot.config.loader import load_config, parse_config
from handlers.normalize import normalize, normalize_with_offsets
from handlers.routing import Router
from tests.conftest import ROOT

TREE = """\
station: {id: s1, name: 测试派出所}
officers:
  - {id: wang, name: 王警官, wechat_id: wxid_wang, role: community}
groups:
  - {id: g1, room_id: "g1@chatroom"}
  - {id: g2, room_id: "g2@chatroom"}
routes:
  - id: fire
    category: fire
    severity: P1
    match:
      any: [着火, 冒烟]
      exclude: [演习, 火锅]
  - id: lost_child
    category: lost_child
    severity: P1
    match:
      all: [[孩子, 小孩], [找不到, 走丢]]
  - id: scam
    category: scam
    match:
      any: [刷单, 转账]
      regex: ['\\d{6}.*验证码']
    routes:
      - id: scam_rebate
        match: {any: [刷单返利]}
      - id: scam_code
        severity: P1
        match: {regex: ['验证码']}
  - id: g2_only
    category: noise
    groups: [g2]
    continue: true
    match: {any: [噪音]}
  - id: noise_everywhere
    category: noise2
    match: {any: [噪音]}
"""

CASES = [
    # text, group, expected route ids in order
    ("楼道着火了", None, ["fire"]),
    ("楼道冒烟！", "g1", ["fire"]),
    ("消防演习，楼道会冒烟", None, []),
    ("今晚吃火锅，锅着火了哈哈", None, []),
    ("孩子找不到了", None, ["lost_child"]),
    ("小孩子在哪", None, []),
    ("找不到钥匙", None, []),
    ("做刷单返利被骗", None, ["scam_rebate"]),  # nested keyword 刷单 inside 刷单返利 still matches the parent
    ("有人让我刷单", None, ["scam"]),
    ("收到123456验证码别告诉别人", None, ["scam_code"]),
    ("转 账", None, ["scam"]),  # spaces between characters do not dodge the filter
    ("轉賬", None, ["scam"]),  # traditional characters
    ("楼下有噪音", "g2", ["g2_only", "noise_everywhere"]),  # continue lets a second route match
    ("楼下有噪音", "g1", ["noise_everywhere"]),  # scoped route skipped outside its groups
    ("今晚吃火锅吗", None, []),
    ("", None, []),
]


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(parse_config(TREE))


@pytest.mark.parametrize(("text", "group", "expected"), CASES)
def test_route_table(router: Router, text: str, group: str | None, expected: list[str]) -> None:
    decision = router.classify(text, group)
    assert [m.route.id for m in decision.matches] == expected
    # the explaining path must decide exactly as production does
    explained, _ = router.explain(text, group)
    assert [m.route.id for m in explained.matches] == expected


def test_children_inherit_from_parent(router: Router) -> None:
    match = router.classify("做刷单返利")
    assert match.first is not None
    assert match.first.route.category == "scam"
    assert match.first.route.path == ("scam", "scam_rebate")
    assert match.first.route.severity.value == "P2"  # parent's default severity
    code = router.classify("短信123456是验证码").first
    assert code is not None and code.route.severity.value == "P1"


def test_explain_reports_keywords_positions_and_vetoes(router: Router) -> None:
    decision, offsets = router.explain("消防 演习:楼道冒烟")
    assert decision.matches == ()
    assert [v.route.id for v in decision.vetoed] == ["fire"]
    veto_hit = decision.vetoed[0].hits[0]
    assert veto_hit.keyword == "演习"
    assert (offsets[veto_hit.start], offsets[veto_hit.end - 1] + 1) == (3, 5)
    decision, offsets = router.explain("裸 着火")
    hit = decision.matches[0].hits[0]
    assert (hit.keyword, offsets[hit.start], offsets[hit.end - 1] + 1) == ("着火", 2, 4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("裸 聊", "裸聊"),
        ("转-账", "转账"),
        ("刷.单", "刷单"),
        ("ＡＢＣ１２３", "abc123"),
        ("國際轉賬😀！", "国际转账"),
        ("  ", ""),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected
    normalized, offsets = normalize_with_offsets(text)
    assert normalized == expected
    assert len(offsets) == len(normalized)


# The default pack must catch the reports the spine promises and stay quiet on everyday chat.
DEFAULT_CASES = [
    ("楼道闻到一股烟焦味!", "fire"),
    ("一个三四岁的小男孩光着脚在外到处找妈妈", "lost_child"),
    ("收到一条短信说法人信息到期", "scam"),
    ("有人拿裸聊视频威胁我转钱", "scam"),
    ("今晚吃火锅吗", "none"),
    ("孩子放学了", "none"),
]


@pytest.mark.parametrize(("text", "category"), DEFAULT_CASES)
def test_default_config_routes(text: str, category: str) -> None:
    router = Router(load_config(ROOT / "config.yaml"))
    assert router.classify(text, "jinxiu").category == category


ACTIVE = """\
station: {id: s1, name: 测试派出所}
officers:
  - {id: wang, name: 王警官, wechat_id: wxid_wang, role: community}
routes:
  - id: night_noise
    category: noise
    active: [{days: daily, start: "22:00", end: "06:00"}]
    match: {any: [噪音]}
"""


@pytest.mark.parametrize(
    ("local", "expected"),
    [("2026-11-28 23:00", ["night_noise"]), ("2026-11-29 05:59", ["night_noise"]), ("2026-11-28 12:00", [])],
)
def test_active_hours(local: str, expected: list[str]) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    router = Router(parse_config(ACTIVE))
    at = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo("Asia/Shanghai"))
    assert [m.route.id for m in router.classify("楼上噪音", None, at).matches] == expected


def test_shipped_route_expectations_pass_through_the_cli() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--config", str(ROOT / "config.yaml"), "route", "--test",
         str(ROOT / "tests" / "data" / "default_routes_test.yaml")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout


def test_route_test_reports_a_mismatch_with_its_line(tmp_path: object) -> None:
    import subprocess
    import sys
    from pathlib import Path

    expectations = Path(str(tmp_path)) / "expect.yaml"
    expectations.write_text('- {text: "今晚吃火锅吗", category: none}\n- {text: "今晚吃火锅吗", category: fire}\n',
                            encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "route", "--config", str(ROOT / "config.yaml"), "--test",
         str(expectations)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert f"FAIL {expectations}:2:" in result.stdout
    assert "1 passed, 1 failed" in result.stdout


def test_route_jsonl_cli() -> None:
    import json
    import subprocess
    import sys

    stdin = '{"id": 7, "text": "楼道闻到一股烟焦味!"}\n今晚吃火锅吗\n{"id": "x", "text": "有人拿裸 聊视频威胁我转钱"}\n'
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(ROOT / "config.yaml"), "route",
                             "--jsonl"], input=stdin, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0] == {"id": 7, "category": "fire", "route": "fire", "severity": "P1"}
    assert rows[1] == {"id": None, "category": "none", "route": None, "severity": None}
    assert rows[2]["category"] == "scam" and rows[2]["id"] == "x"


def test_route_explain_cli_names_keywords_and_who_is_pinged() -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "route", "--config", str(ROOT / "config.yaml"),
                             "--group", "fangdian", "--at", "2026-11-28 23:00", "楼道闻到一股烟 焦味!"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "route fire" in result.stdout and "severity P1" in result.stdout
    assert "烟焦味" in result.stdout
    assert "李警官" in result.stdout  # Saturday night: the duty officer
